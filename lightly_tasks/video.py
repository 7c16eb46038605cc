"""One reader interface for video frames, with two backends: PyAV (streaming) and decord (whole object).

Both read from a seekable file object (in the pipeline a :class:`~lightly_tasks.ranged_file.CountedFile` over
the datasource) and yield :class:`Frame` records in presentation order, including the frames that could not be
decoded (``rgb`` None, ``error`` set), so the caller can list them with a reason.

- PyAV streams: it reads the container through the file object as it demuxes, so only the header and the
  packets cross the network, and it can seek to a keyframe (:meth:`PyAVReader.frames_at`) for dumps.
- decord copies the whole object before it opens it (measured, see SETUP-FACTS), so :class:`DecordReader`
  reads the object into memory once and hands decord those bytes; use it where memory allows and it decodes
  faster. ``bench/video.py`` measures both.

Frame indices count every frame of the stream in presentation order (undecodable ones included), so they
match the header's frame count and the Lightly Worker's frame names.
"""

from __future__ import annotations

import bisect
import heapq
import io
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING, BinaryIO, Protocol

import av
import av.error
import numpy as np

if TYPE_CHECKING:  # not imported at run time: the decoder child process stays free of fsspec and pandas
    from lightly_tasks.ranged_file import Deadline

VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".m4v", ".avi", ".mkv", ".webm"})
BACKENDS = ("pyav", "decord")
STREAM_BUFFER_BYTES = 64 * 2**10
"""PyAV's I/O buffer when streaming a whole video (its reads are served from the file's read-ahead cache)."""


class VideoOpenError(ValueError):
    """The container cannot be opened or holds no video stream; the message is the corruptness reason."""


@dataclass(frozen=True)
class StreamInfo:
    """What a container's header says about its first video stream; ``frames`` is 0 when it does not say."""

    container: str
    codec: str
    width: int
    height: int
    frames: int
    fps: float | None
    duration: float | None
    time_base: Fraction | None


@dataclass(frozen=True)
class Frame:
    """One frame in presentation order: ``rgb`` is (H, W, 3) uint8, None for a bad frame (``error`` set)."""

    index: int
    pts: int | None
    time: float | None
    keyframe: bool
    packet_size: int
    rgb: np.ndarray | None
    error: str | None = None


@dataclass
class DecodeStats:
    """Counts of one pass: frames seen (good and bad), bad frames, keyframe pts, and why it stopped early."""

    frames: int = 0
    bad: int = 0
    keyframes: list[int] = field(default_factory=list)
    stopped: str | None = None


class VideoReader(Protocol):
    """What the decoding pass needs from a backend."""

    backend: str
    info: StreamInfo
    stats: DecodeStats

    def frames(self, stride: int = 1) -> Iterator[Frame]:
        """Yield frames 0, stride, 2*stride, ... (bad ones included); update ``stats`` over all frames."""
        ...

    def close(self) -> None: ...


def _reason(exc: BaseException) -> str:
    """FFmpeg's message without PyAV's errno prefix and file-name suffix."""
    return re.sub(r"^\[Errno -?\d+\] ", "", str(exc)).split(": '", 1)[0] or type(exc).__name__


def _stream_info(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> StreamInfo:
    rate = stream.average_rate or stream.guessed_rate
    duration = None
    if stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        duration = container.duration / av.time_base
    return StreamInfo(
        container=container.format.name,
        codec=stream.codec_context.name,
        width=int(stream.codec_context.width),
        height=int(stream.codec_context.height),
        frames=int(stream.frames or 0),
        fps=float(rate) if rate else None,
        duration=duration,
        time_base=stream.time_base,
    )


QUICK_PROBE = {"probesize": "32", "analyzeduration": "1"}
"""FFmpeg options that stop stream probing after the container header (no packets read to guess parameters)."""


def probe(file: BinaryIO, *, buffer_size: int = 8 * 2**10) -> StreamInfo:
    """The header's view of ``file``'s first video stream, reading as little as PyAV allows.

    First with :data:`QUICK_PROBE` (for Matroska: one buffer instead of ~35 KB of packets); a header that
    leaves the frame size or rate unknown that way is probed again with FFmpeg's default probing.
    Raises :class:`VideoOpenError` with a reason ("unreadable container: ...", "zero frames: ...").
    """
    reader = PyAVReader(file, buffer_size=buffer_size, threads=False, options=QUICK_PROBE)
    try:
        info = reader.info
    finally:
        reader.close()
    if info.width and info.height and info.fps:
        return info
    file.seek(0)
    reader = PyAVReader(file, buffer_size=buffer_size, threads=False)
    try:
        return reader.info
    finally:
        reader.close()


class PyAVReader:
    """Stream a container through PyAV; frames are decoded in order, with the decoder's own threads."""

    backend = "pyav"

    def __init__(
        self,
        file: BinaryIO,
        *,
        buffer_size: int = STREAM_BUFFER_BYTES,
        threads: bool = True,
        deadline: Deadline | None = None,
        options: dict[str, str] | None = None,
    ) -> None:
        self._deadline = deadline
        try:
            self.container = av.open(file, "r", buffer_size=buffer_size, options=options or {})
        except av.error.FFmpegError as exc:
            raise VideoOpenError(f"unreadable container: {_reason(exc)}") from exc
        if not self.container.streams.video:
            self.container.close()
            raise VideoOpenError("zero frames: the container holds no video stream")
        self.stream = self.container.streams.video[0]
        if threads:
            self.stream.thread_type = "AUTO"
        self.info = _stream_info(self.container, self.stream)
        self.stats = DecodeStats()

    def close(self) -> None:
        self.container.close()

    def _check(self) -> None:
        if self._deadline is not None:
            self._deadline.check()

    def _decoded(self) -> Iterator[tuple[av.VideoFrame | None, int | None, int]]:
        """Yield ``(frame, pts, packet_size)`` in presentation order; ``frame`` None for a lost packet.

        A packet whose pts never comes out of the decoder was undecodable: it is reported when the decoder
        outputs a later frame (decoders output in presentation order, also with frame threading, where the
        error itself surfaces on a later packet) or when the stream ends.
        """
        sent: list[int] = []
        sizes: dict[int, int] = {}

        def lost_before(pts: int | None) -> Iterator[tuple[None, int, int]]:
            while sent and (pts is None or sent[0] < pts):
                lost = heapq.heappop(sent)
                yield None, lost, sizes.pop(lost, 0)

        def output(frames: Sequence[av.VideoFrame]) -> Iterator[tuple[av.VideoFrame | None, int | None, int]]:
            for frame in frames:
                yield from lost_before(frame.pts)
                size = 0
                if frame.pts is not None and sent and sent[0] == frame.pts:
                    heapq.heappop(sent)
                    size = sizes.pop(frame.pts, 0)
                yield frame, frame.pts, size

        try:
            for packet in self.container.demux(self.stream):
                self._check()
                if packet.size and packet.pts is not None:
                    heapq.heappush(sent, packet.pts)
                    sizes[packet.pts] = packet.size
                try:
                    frames = self.stream.decode(packet)
                except av.error.FFmpegError:
                    continue
                yield from output(frames)
        except av.error.FFmpegError as exc:
            self.stats.stopped = f"truncated: the stream ends early: {_reason(exc)}"
        try:
            yield from output(self.stream.decode(None))
        except av.error.FFmpegError:
            pass
        yield from lost_before(None)

    def frames(self, stride: int = 1) -> Iterator[Frame]:
        time_base = self.stream.time_base
        damaged_after: int | None = None
        for decoded, pts, size in self._decoded():
            index = self.stats.frames
            self.stats.frames += 1
            time = float(pts * time_base) if pts is not None and time_base is not None else None
            if decoded is None:
                self.stats.bad += 1
                damaged_after = index
                if index % stride == 0:
                    yield Frame(
                        index, pts, time, False, size, None, "undecodable: the decoder rejected this frame"
                    )
                continue
            if decoded.key_frame:
                damaged_after = None
                if pts is not None:
                    self.stats.keyframes.append(pts)
            error = None
            if damaged_after is not None:
                error = f"damaged: predicted from undecodable frame {damaged_after} of its GOP"
            elif decoded.is_corrupt:
                error = "damaged: the decoder concealed errors in this frame"
            self.stats.bad += error is not None
            if index % stride == 0:
                rgb = None if error else decoded.to_ndarray(format="rgb24")
                yield Frame(index, pts, time, bool(decoded.key_frame), size, rgb, error)

    def frames_at(
        self, targets: Sequence[int], keyframes: Sequence[int] = ()
    ) -> Iterator[tuple[int, np.ndarray | None]]:
        """Decode the frames whose pts are ``targets``: (pts, (H, W, 3) uint8 or None), in ascending pts.

        For each target the reader seeks to the keyframe at or before it and decodes forward, so only the
        bytes of the GOPs holding targets are read. ``keyframes`` (the stream's keyframe pts, from the
        decoding pass) lets it decode on instead of seeking again when the next target is in the same GOP.
        """
        keys = sorted(keyframes)
        last: int | None = None
        decoded: Iterator[tuple[av.VideoFrame | None, int | None, int]] = iter(())
        for target in sorted(set(targets)):
            position = bisect.bisect_right(keys, target) - 1
            gop_start = keys[position] if position >= 0 else None
            if last is None or target <= last or gop_start is None or gop_start > last:
                self.container.seek(target, stream=self.stream, backward=True, any_frame=False)
                decoded = self._decoded()
            found = None
            for frame, pts, _ in decoded:
                if pts is None or frame is None:
                    continue
                last = pts
                if pts >= target:
                    found = frame if pts == target else None
                    break
            yield target, None if found is None else found.to_ndarray(format="rgb24")


class DecordReader:
    """Read the whole object into memory once, then decode it with decord (frames by index)."""

    backend = "decord"

    def __init__(self, file: BinaryIO, *, deadline: Deadline | None = None) -> None:
        import decord  # imported here: only this backend needs it

        self._deadline = deadline
        data = file.read()
        header = PyAVReader(io.BytesIO(data), threads=False)
        self.info = header.info
        header.close()
        try:
            self._reader = decord.VideoReader(io.BytesIO(data), ctx=decord.cpu(0))
        except decord.DECORDError as exc:
            raise VideoOpenError(f"unreadable container: {exc}") from exc
        self._error = decord.DECORDError
        self.stats = DecodeStats()

    def close(self) -> None:
        del self._reader

    def frames(self, stride: int = 1) -> Iterator[Frame]:
        n = len(self._reader)
        time_base = self.info.time_base
        keys = {int(k) for k in self._reader.get_key_indices()}
        self.stats.frames = n
        if time_base:
            self.stats.keyframes = [
                round(self._reader.get_frame_timestamp(k)[0] / time_base) for k in sorted(keys)
            ]
        for index in range(0, n, stride):
            if self._deadline is not None:
                self._deadline.check()
            start = float(self._reader.get_frame_timestamp(index)[0])
            pts = round(start / time_base) if time_base else None
            try:
                rgb = self._reader[index].asnumpy()
            except self._error as exc:
                self.stats.bad += 1
                yield Frame(index, pts, start, index in keys, 0, None, f"undecodable: {exc}")
                continue
            yield Frame(index, pts, start, index in keys, 0, rgb, None)


def open_reader(backend: str, file: BinaryIO, *, deadline: Deadline | None = None) -> VideoReader:
    """A reader of ``backend`` ('pyav' or 'decord') over ``file``; raises :class:`VideoOpenError`."""
    if backend == "pyav":
        return PyAVReader(file, deadline=deadline)
    if backend == "decord":
        return DecordReader(file, deadline=deadline)
    raise ValueError(f"unknown video backend {backend!r}; use one of {', '.join(BACKENDS)}")
