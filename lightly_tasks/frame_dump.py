"""Write the selected video frames as images, reading only the GOPs that hold them.

Per video, the file is opened for ranged reads (small blocks), PyAV reads the container header, and for each
selected frame it seeks to the keyframe at or before it and decodes forward
(:meth:`~lightly_tasks.video.PyAVReader.frames_at`); consecutive selected frames of one GOP share the decode.
So the bytes read are the header plus the selected GOPs, not the whole video. As in the decoding pass, the
decoder runs in a child process by default (:mod:`lightly_tasks.decoder_process`), which also encodes the
images, so only PNG/JPEG bytes cross the pipe.
"""

from __future__ import annotations

import io
import logging
import posixpath
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass

import pandas as pd

from lightly_tasks import artifacts
from lightly_tasks.decoder_process import DecoderProcess, dump_isolated
from lightly_tasks.frame_encoding import encode_frame
from lightly_tasks.progress import Progress
from lightly_tasks.ranged_file import Deadline, DeadlineExceeded, open_counted
from lightly_tasks.storage import ByteCounter, Location, read_failure_reason, safe_key
from lightly_tasks.video import PyAVReader, VideoOpenError

log = logging.getLogger(__name__)

DUMP_BUFFER_BYTES = 16 * 2**10
"""PyAV's I/O buffer while seeking for frames."""
EXTENSIONS = {"png": ".png", "jpeg": ".jpg"}


def dump_block_bytes(size: int | None) -> int:
    """Ranged-read size for seeking in a video of ``size`` bytes: 1/32 of it, between 16 KiB and 1 MiB."""
    return min(2**20, max(16 * 2**10, (size or 0) // 32))


def dump_name(frame_key: str, fmt: str) -> str:
    """The file name a frame is dumped under: its sample key, with the format's extension."""
    return posixpath.splitext(frame_key)[0] + EXTENSIONS[fmt]


def dump_frames(
    datasource: Location,
    output: Location,
    selected: pd.DataFrame,
    videos: pd.DataFrame,
    counter: ByteCounter,
    *,
    fmt: str = "png",
    image_size: int | None = None,
    timeout: float | None = None,
    isolate: bool = True,
) -> int:
    """Write the frames in ``selected`` (key, video_key, frame_pts) to ``output``; return how many it wrote.

    ``videos`` has per video ``key``, ``size`` and ``keyframes`` (keyframe pts of the decoding pass). With
    ``isolate`` (the default) the frames are decoded and encoded in a decoder child process, as in the
    decoding pass, so a decoder crash or hang costs that video's dump, not the run. A frame or video that
    cannot be decoded again, or not within ``timeout`` seconds per video, is logged and skipped. Frame keys
    that would escape the output root raise ValueError before anything is read.
    """
    names = {key: safe_key(dump_name(key, fmt)) for key in selected["key"]}
    info = videos.set_index("key")
    progress = Progress("dump frames", len(selected), unit="frames", logger=log)
    written = 0
    with DecoderProcess() if isolate else nullcontext() as process:
        for video_key, frames in selected.groupby("video_key", sort=True):
            size = int(info.at[video_key, "size"]) if "size" in info else None
            keyframes = info.at[video_key, "keyframes"] if "keyframes" in info else []
            key_of = dict(zip(frames["frame_pts"].astype("int64"), frames["key"], strict=True))
            video = _VideoDump(
                key=str(video_key),
                size=size,
                targets=sorted(key_of),
                keyframes=[] if keyframes is None else [int(k) for k in keyframes],
            )
            # Writing stays outside the reading: an output that cannot be written fails the task.
            for pts, data in _dumpable_frames(datasource, video, counter, fmt, image_size, timeout, process):
                if data is None:
                    log.warning("dump: frame %s could not be decoded again; skipped", key_of[pts])
                    continue
                artifacts.write_bytes(output, names[key_of[pts]], data)
                written += 1
                progress.update()
    progress.finish()
    return written


@dataclass(frozen=True)
class _VideoDump:
    """One video's share of a dump: its key and listed size, the frames' pts and the keyframes' pts."""

    key: str
    size: int | None
    targets: list[int]
    keyframes: list[int]


def _dumpable_frames(
    datasource: Location,
    video: _VideoDump,
    counter: ByteCounter,
    fmt: str,
    image_size: int | None,
    timeout: float | None,
    process: DecoderProcess | None,
) -> Iterator[tuple[int, bytes | None]]:
    """(pts, encoded image or None) of ``video``'s targets; a video that cannot be read or decoded within
    ``timeout`` is logged and ends early (its remaining frames skipped)."""
    if process is not None:
        process.connections()  # a fresh child's start-up is not this video's time
    deadline = Deadline(timeout)
    done = 0
    try:
        with open_counted(
            datasource,
            video.key,
            size=video.size,
            counter=counter,
            block_size=dump_block_bytes(video.size),
            max_blocks=4,
            deadline=deadline,
        ) as f:
            for item in _encoded_frames(f, video, fmt, image_size, process, deadline):
                done += 1
                yield item
    except (VideoOpenError, OSError) as exc:  # DeadlineExceeded included
        reason = str(exc) if isinstance(exc, VideoOpenError | DeadlineExceeded) else read_failure_reason(exc)
        log.warning("dump: %s: %s; its %d remaining frame(s) skipped", video.key, reason, len(video.targets) - done)


def _encoded_frames(
    f: io.RawIOBase,
    video: _VideoDump,
    fmt: str,
    image_size: int | None,
    process: DecoderProcess | None,
    deadline: Deadline,
) -> Iterator[tuple[int, bytes | None]]:
    """(pts, encoded image or None) per target frame: in ``process``'s child, or in this process without one."""
    if process is not None:
        yield from dump_isolated(
            process,
            f,
            key=video.key,
            targets=video.targets,
            keyframes=video.keyframes,
            fmt=fmt,
            image_size=image_size,
            buffer_size=DUMP_BUFFER_BYTES,
            deadline=deadline,
        )
        return
    reader = PyAVReader(f, buffer_size=DUMP_BUFFER_BYTES, threads=False, deadline=deadline)
    try:
        for pts, rgb in reader.frames_at(video.targets, video.keyframes):
            yield pts, None if rgb is None else encode_frame(rgb, fmt=fmt, image_size=image_size)
    finally:
        reader.close()
