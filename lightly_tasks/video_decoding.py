"""The run's one decoding pass over a shard of videos: verdicts per video and per frame, metadata, the cache.

Each video is streamed once through :mod:`lightly_tasks.video` (ranged reads of ``STREAM_BLOCK_BYTES``),
its frames decoded in order; every ``stride``-th frame becomes a sample named by
:func:`~lightly_tasks.frame_names.frame_key`, with a content hash of its pixels, the image metadata of
:mod:`lightly_tasks.metadata` and a square uint8 thumbnail appended to the same ``.npy`` cache parts that the
image pass writes, so embedding works unchanged.

Verdicts:

- a video is ``corrupt`` (one row under the video's own key, no frames) when its container is unreadable, it
  holds zero decodable frames, or it could not be read at all;
- otherwise its good frames are samples, and each bad frame is a ``corrupt`` row under its frame key with the
  reason: ``undecodable`` (the decoder rejected it), ``damaged`` (predicted from an undecodable frame),
  ``missing`` (the header announces more frames than the stream holds: a truncated file) or ``timeout``;
- a header count that disagrees with the stream is recorded on the video (``reason``) either way.

By default each video is decoded in a child process (:mod:`lightly_tasks.decoder_process`): a decoder that
crashes (segfault, abort, OOM kill) makes that video ``corrupt`` with the reason ``decoder crashed (signal N,
NAME)`` and the shard goes on with a fresh child; a video over its ``timeout`` has its child killed, keeps the
frames it delivered, and the rest are listed with the reason ``timeout``. Without isolation (``isolate=False``)
decoding runs in a worker thread per video whose reads and frame loop check the same deadline.

A header without an exact frame count (Matroska/WebM, ``count_method`` "decoding pass") leaves the count to
this pass, which demuxes every packet anyway: the stream's count is the video's frame count, and it is
checked against the header's estimate (duration x frame rate).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd

from lightly_tasks import artifacts
from lightly_tasks.decoder_child import POST_WORKERS
from lightly_tasks.decoder_process import DecodeRequest, DecoderProcess, IsolatedVideoJob
from lightly_tasks.decoding import CACHE_PART_SIZE, ordered_map
from lightly_tasks.frame_names import frame_key
from lightly_tasks.frame_samples import FrameResult
from lightly_tasks.frame_samples import frame_result as _frame_result
from lightly_tasks.progress import Progress
from lightly_tasks.ranged_file import Deadline, DeadlineExceeded
from lightly_tasks.storage import ByteCounter, Location, read_failure_reason
from lightly_tasks.video import DecodeStats, Frame, StreamInfo, VideoOpenError, open_reader

log = logging.getLogger(__name__)

ESTIMATE_TOLERANCE = 0.02
"""Relative slack (at least 2 frames) between a duration-based frame estimate and the stream's count."""
QUEUE_FRAMES = 16
"""Decoded frames buffered between the decoding thread and the writer (in-process decoding)."""
FRAME_COLUMNS = ["video_key", "frame_index", "frame_pts", "frame_time"]
VIDEO_COLUMNS = [
    "key",
    "verdict",
    "reason",
    "backend",
    "stream_frames",
    "n_samples",
    "n_ok",
    "n_bad",
    "keyframes",
    "time_base",
    "bytes_read",
    "decode_seconds",
]


class VideoJob:
    """Decode one video in a worker thread; iterate for its sampled frames, then read the outcome.

    After iteration: ``info`` (header, None if it never opened), ``stats`` (None if it did not finish) and
    ``error`` (why it stopped: open failure, read failure, timeout; None when it ran to the end).
    """

    def __init__(self, request: DecodeRequest) -> None:
        self.request = request
        self.info: StreamInfo | None = None
        self.stats: DecodeStats | None = None
        self.error: str | None = None
        self._deadline = Deadline(request.timeout)
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=QUEUE_FRAMES)

    def _put(self, kind: str, item: Any) -> None:
        while True:
            try:
                self._queue.put((kind, item), timeout=0.2)
                return
            except queue.Full:
                self._deadline.check()

    def _result(self, frame: Frame) -> FrameResult:
        return _frame_result(frame, self.request.image_size)

    def _produce(self) -> None:
        try:
            with self.request.open(self._deadline) as f:
                reader = open_reader(self.request.backend, f, deadline=self._deadline)
                try:
                    self._put("info", reader.info)
                    frames = reader.frames(self.request.stride)
                    for result in ordered_map(self._result, frames, workers=POST_WORKERS, window=2 * POST_WORKERS):
                        self._put("frame", result)
                    self._put("end", reader.stats)
                finally:
                    reader.close()
        except DeadlineExceeded:
            return  # the consumer stopped waiting and has recorded the timeout
        except VideoOpenError as exc:
            self._finish(str(exc))
        except OSError as exc:
            self._finish(read_failure_reason(exc))
        except Exception as exc:  # a decoder failure on one video must not end the shard
            log.exception("decoding %s failed", self.request.key)
            self._finish(f"decode error: {type(exc).__name__}: {exc}")

    def _finish(self, reason: str) -> None:
        try:
            self._put("error", reason)
        except DeadlineExceeded:
            pass

    def __iter__(self) -> Iterator[FrameResult]:
        worker = threading.Thread(target=self._produce, name=f"video-decode-{self.request.key}", daemon=True)
        worker.start()
        while True:
            remaining = self._deadline.remaining()
            try:
                kind, item = self._queue.get(timeout=remaining)
            except queue.Empty:
                self._deadline.cancel()
                self.error = f"timeout: not decoded within video.timeout_seconds={self.request.timeout:g}"
                return
            if kind == "info":
                self.info = item
            elif kind == "frame":
                yield item
            elif kind == "end":
                self.stats = item
                return
            else:
                self.error = item
                return


def _video_verdict(
    header_frames: int | None, estimate: int | None, job: VideoJob | IsolatedVideoJob, n_ok: int, n_bad: int
) -> tuple[str, str | None]:
    """(verdict, reason) of a decoded video: ok, partial (some bad frames) or corrupt (no usable frame).

    The stream's frame count is checked against the header's exact count where it has one, else against the
    estimate from its duration and frame rate (:data:`ESTIMATE_TOLERANCE`). A video whose decoder crashed
    is corrupt as a whole: the frames it delivered before came from a decoder in an undefined state.
    """
    if job_crashed(job):
        return "corrupt", job.error
    notes = []
    stream_frames = job.stats.frames if job.stats else None
    if job.error:
        notes.append(job.error)
    elif job.stats and job.stats.stopped:
        notes.append(job.stats.stopped)
    if stream_frames is not None and header_frames is not None and stream_frames != header_frames:
        notes.append(f"frame count mismatch: the header announces {header_frames}, the stream holds {stream_frames}")
    elif stream_frames is not None and header_frames is None and estimate_disagrees(estimate, stream_frames):
        notes.append(
            f"frame count mismatch: the header's duration and frame rate imply about {estimate} frames, "
            f"the stream holds {stream_frames}"
        )
    if n_bad:
        notes.append(f"{n_bad} bad frame(s)")
    if n_ok == 0:
        if not job.error and not stream_frames:
            notes.insert(0, "zero frames: the stream holds no decodable frame")
        elif not job.error:
            notes.insert(0, "no usable frame")
        return "corrupt", "; ".join(notes)
    return ("partial" if notes else "ok"), ("; ".join(notes) or None)


def job_crashed(job: VideoJob | IsolatedVideoJob) -> bool:
    """Whether ``job``'s decoder process died on its video."""
    return getattr(job, "crashed", False)


def estimate_disagrees(estimate: int | None, stream_frames: int) -> bool:
    """Whether a stream's frame count is off its header estimate by more than :data:`ESTIMATE_TOLERANCE`."""
    if estimate is None:
        return False
    return abs(stream_frames - estimate) > max(2.0, ESTIMATE_TOLERANCE * estimate)


def decode_videos(
    datasource: Location,
    videos: pd.DataFrame,
    cache: Location,
    *,
    image_size: int,
    stride: int,
    timeout: float | None,
    backend: str,
    counter: ByteCounter,
    max_object_bytes: int | None = None,
    isolate: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run the pass over ``videos`` (frame-counting rows of one shard); write the cache parts to ``cache``.

    Returns ``(frames, verdicts)``. ``frames`` has one row per sample or bad frame (key = frame key) and one
    per unusable video (key = video key, ``frame_index`` -1), with the video's listing columns, ``verdict``,
    ``reason``, ``content_hash``, ``cache_part``/``cache_row``, :data:`FRAME_COLUMNS` and the metadata.
    ``verdicts`` has one row per video (:data:`VIDEO_COLUMNS`). With the decord backend, which holds a
    whole video in memory, a video listed as larger than ``max_object_bytes`` is judged "too large" unread;
    PyAV streams and has no such limit. With ``isolate`` (the default) each video is decoded in a child
    process (:mod:`lightly_tasks.decoder_process`), so a decoder crash is that video's verdict.
    """
    options = {
        "image_size": image_size,
        "stride": stride,
        "timeout": timeout,
        "backend": backend,
        "counter": counter,
        "max_object_bytes": max_object_bytes,
    }
    if not isolate:
        return _decode_videos(datasource, videos, cache, None, **options)
    with DecoderProcess() as process:
        return _decode_videos(datasource, videos, cache, process, **options)


def _decode_videos(
    datasource: Location,
    videos: pd.DataFrame,
    cache: Location,
    process: DecoderProcess | None,
    *,
    image_size: int,
    stride: int,
    timeout: float | None,
    backend: str,
    counter: ByteCounter,
    max_object_bytes: int | None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    rows: list[dict[str, Any]] = []
    verdicts: list[dict[str, Any]] = []
    part: list[np.ndarray] = []
    part_index = 0
    listing_columns = [c for c in ("etag", "size", "last_modified", "shard") if c in videos]

    def flush() -> None:
        nonlocal part, part_index
        if part:
            artifacts.write_array(cache, f"part-{part_index:05d}.npy", np.stack(part))
            part, part_index = [], part_index + 1

    for video in videos.to_dict("records"):
        key = video["key"]
        listing = {c: video[c] for c in listing_columns}
        header_frames = None if pd.isna(video.get("frames")) else int(video["frames"])
        estimate = video.get("frames_estimate")
        estimate = None if estimate is None or pd.isna(estimate) else int(estimate)
        size = None if pd.isna(video.get("size")) else int(video["size"])
        unread = video["header_error"] if isinstance(video.get("header_error"), str) else None
        too_large = max_object_bytes is not None and size is not None and size > max_object_bytes
        if backend == "decord" and too_large:
            unread = (
                f"too large: {size} bytes, over max_object_bytes={max_object_bytes} for the decord backend, "
                "which reads whole videos into memory; not read (video.backend pyav streams it)"
            )
        if unread:
            log.warning("corrupt video: %s: %s", key, unread)
            rows.append(_video_row(key, listing, unread))
            verdicts.append({"key": key, "verdict": "corrupt", "reason": unread, "bytes_read": 0})
            continue
        own = ByteCounter()
        request = DecodeRequest(datasource, key, size, backend, stride, image_size, timeout, own)
        job = VideoJob(request) if process is None else IsolatedVideoJob(process, request)
        expected = header_frames or estimate or 0
        progress = Progress(f"decode {key}", -(-expected // stride), unit="frames", logger=log)
        n_ok = n_bad = n_samples = 0
        last_index = -1
        for result in job:
            frame = result.frame
            last_index = frame.index
            row = _row(key, listing, frame.index, frame.pts, frame.time, frame.error, result.content_hash)
            if result.thumbnail is None:
                n_bad += 1
            else:
                row["cache_part"], row["cache_row"] = part_index, len(part)
                part.append(result.thumbnail)
                if len(part) == CACHE_PART_SIZE:
                    flush()
                n_ok += 1
            row.update(result.metadata)
            rows.append(row)
            n_samples += 1
            progress.update()
        seconds = progress.finish()
        counter.add(own.total)
        # frames the header announces that the stream never delivered (truncated file, timeout)
        delivered = job.stats.frames if job.stats else last_index + 1
        if header_frames and delivered < header_frames and job.info is not None and not job_crashed(job):
            why = (
                job.error or f"missing: the header announces {header_frames} frames, the stream ends after {delivered}"
            )
            first = -(-delivered // stride) * stride
            missing = range(first, header_frames, stride)
            rows.extend(_row(key, listing, index, None, None, why) for index in missing)
            n_bad += len(missing)
            n_samples += len(missing)
        verdict, reason = _video_verdict(header_frames, estimate, job, n_ok, n_bad)
        if verdict == "corrupt":  # its frames are dropped (after a decoder crash, also ones that decoded)
            n_ok = 0
            rows[:] = [r for r in rows if r["video_key"] != key]
            rows.append(_video_row(key, listing, reason or "corrupt"))
            log.warning("corrupt video: %s: %s", key, reason)
        elif reason:
            log.warning("video %s: %s", key, reason)
        time_base = job.info.time_base if job.info else None
        verdicts.append(
            {
                "key": key,
                "verdict": verdict,
                "reason": reason,
                "backend": job.request.backend,
                "stream_frames": job.stats.frames if job.stats else None,
                "n_samples": n_samples,
                "n_ok": n_ok,
                "n_bad": n_bad,
                "keyframes": list(job.stats.keyframes) if job.stats else [],
                "time_base": str(time_base) if time_base else None,
                "bytes_read": own.total,
                "decode_seconds": round(seconds, 4),
            }
        )
    flush()
    frames = (
        pd.DataFrame(rows)
        if rows
        else pd.DataFrame(
            columns=[
                "key",
                *listing_columns,
                "verdict",
                "reason",
                "content_hash",
                "cache_part",
                "cache_row",
                *FRAME_COLUMNS,
            ]
        )
    )
    if len(frames):
        frames = frames.astype(
            {"frame_index": "int64", "frame_pts": "Int64", "cache_part": "int64", "cache_row": "int64"}
        )
    return frames, pd.DataFrame(verdicts, columns=VIDEO_COLUMNS)


def _row(
    video_key: str,
    listing: dict[str, Any],
    index: int,
    pts: int | None,
    time: float | None,
    error: str | None,
    content_hash: str | None = None,
) -> dict[str, Any]:
    """The table row of frame ``index`` of ``video_key``: ok without ``error``, else corrupt with it."""
    return {
        "key": frame_key(video_key, index),
        **listing,
        "verdict": "corrupt" if error else "ok",
        "reason": error,
        "content_hash": content_hash,
        "cache_part": -1,
        "cache_row": -1,
        "video_key": video_key,
        "frame_index": index,
        "frame_pts": pts,
        "frame_time": time,
    }


def _video_row(key: str, listing: dict[str, Any], reason: str) -> dict[str, Any]:
    """The single corrupt row of an unusable video, under the video's own key (``frame_index`` -1)."""
    return {**_row(key, listing, -1, None, None, reason), "key": key}
