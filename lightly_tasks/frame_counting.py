"""Frames, fps, duration, codec and size of each video from its container header, with few bytes read.

Per video, in order of cost:

1. ``mp4 header``: an ISO BMFF file (MP4, MOV, M4V) is counted from its ``moov`` box by
   :mod:`lightly_tasks.mp4_header`: a few box headers plus the ``moov`` body. ``avi header``: an AVI is
   counted from its ``hdrl`` list by :mod:`lightly_tasks.avi_header` (three small reads).
2. ``container header``: any other container (MKV, WebM, fragmented MP4, an AVI whose header lacks the count)
   is opened with PyAV through a small I/O buffer; many carry the frame count in their header.
3. ``decoding pass``: where the header has no count (Matroska/WebM usually), counting would mean demuxing
   the whole object, which the decoding pass does anyway. So this stage records only the header's estimate
   (``frames_estimate`` = duration x frame rate; ``frames`` stays empty) and the decoding pass counts the
   stream's packets exactly while it decodes them, and checks that count against the estimate. Total reads
   for such a video stay ~1x its bytes instead of ~2x.

``frames_estimate`` is set for every readable video (the exact count where the header has one); the stage
uses it to balance shards by frames (:func:`balance_shards`).

A video whose header is unreadable gets ``header_error`` (a verdict reason the corruptness stage reuses
without reading the object again).
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from typing import Any, BinaryIO

import numpy as np
import pandas as pd

from lightly_tasks.avi_header import AviHeaderError, NotAviError, read_avi_header
from lightly_tasks.container_track import ContainerTrack
from lightly_tasks.decoder_process import DecoderProcess, probe_isolated
from lightly_tasks.decoding import ordered_map
from lightly_tasks.mp4_header import (
    FragmentedMp4Error,
    Mp4HeaderError,
    NotMp4Error,
    read_mp4_header,
)
from lightly_tasks.progress import Progress
from lightly_tasks.ranged_file import Deadline, DeadlineExceeded, open_counted
from lightly_tasks.storage import ByteCounter, Location, read_failure_reason
from lightly_tasks.video import StreamInfo, VideoOpenError, probe

log = logging.getLogger(__name__)

HEADER_READ_BYTES = 8 * 2**10
"""PyAV's I/O buffer for header probes (reads are exact: the file has no read-ahead cache)."""
DEFERRED = "decoding pass"
"""``count_method`` of a video whose exact count the decoding pass makes (its header has none)."""
COUNT_COLUMNS = [
    "container",
    "codec",
    "width",
    "height",
    "fps",
    "duration",
    "frames",
    "frames_estimate",
    "count_method",
    "header_bytes",
    "header_error",
    "count_seconds",
]


def count_frames(
    location: Location,
    key: str,
    *,
    size: int | None,
    counter: ByteCounter,
    timeout: float | None = None,
    process: DecoderProcess | None = None,
) -> dict[str, Any]:
    """One video's header facts (the :data:`COUNT_COLUMNS`), never raising for a bad or missing object.

    With ``process``, a header that FFmpeg must probe (not MP4/MOV) is probed in that decoder child, so a
    crash is this video's ``header_error`` (``decoder crashed (signal N, NAME)``).
    """
    started = time.monotonic()
    own = ByteCounter()
    deadline = Deadline(timeout)
    row: dict[str, Any] = dict.fromkeys(COUNT_COLUMNS)
    try:
        row.update(_header(location, key, size=size, counter=own, deadline=deadline, process=process))
    except (VideoOpenError, Mp4HeaderError) as exc:
        row["header_error"] = str(exc)
    except DeadlineExceeded as exc:
        row["header_error"] = f"timeout: reading the header: {exc}"
    except OSError as exc:
        row["header_error"] = read_failure_reason(exc)
    counter.add(own.total)
    row["header_bytes"] = own.total
    row["count_seconds"] = round(time.monotonic() - started, 4)
    return row


def _header(
    location: Location,
    key: str,
    *,
    size: int | None,
    counter: ByteCounter,
    deadline: Deadline,
    process: DecoderProcess | None,
) -> dict[str, Any]:
    if size == 0:
        raise VideoOpenError("unreadable container: empty file")
    opened = {"size": size, "counter": counter, "deadline": deadline}
    with open_counted(location, key, block_size=HEADER_READ_BYTES, cache_type="none", **opened) as f:
        file_size = size if size is not None else f.seek(0, 2)
        parsed = _parsed_header(f, file_size)
        if parsed is not None:
            return parsed
        f.seek(0)
        if process is None:
            info = probe(f, buffer_size=HEADER_READ_BYTES)
        else:
            info = probe_isolated(process, f, key=key, buffer_size=HEADER_READ_BYTES, deadline=deadline)
    row = _count_row(info, container=info.container, method="container header")
    if not info.frames:
        estimate = round(info.duration * info.fps) if info.duration and info.fps else None
        row.update(frames=None, frames_estimate=estimate, count_method=DEFERRED)
    return row


def _parsed_header(f: BinaryIO, file_size: int) -> dict[str, Any] | None:
    """The row of an MP4/MOV or AVI counted by our own header parsers; None when FFmpeg must probe it.

    An MP4 whose ``moov`` is broken raises (its verdict); an AVI header that gives no count falls back to
    FFmpeg, which may still read the file.
    """
    try:
        return _count_row(read_mp4_header(f, file_size), container="mp4", method="mp4 header")
    except FragmentedMp4Error:
        return None
    except NotMp4Error:
        pass
    try:
        return _count_row(read_avi_header(f, file_size), container="avi", method="avi header")
    except (NotAviError, AviHeaderError):
        return None


def _count_row(track: ContainerTrack | StreamInfo, *, container: str, method: str) -> dict[str, Any]:
    """A video's header facts as the count table's columns (``frames_estimate``: the header's count)."""
    return {
        "container": container,
        "codec": track.codec,
        "width": track.width,
        "height": track.height,
        "fps": track.fps,
        "duration": track.duration,
        "frames": track.frames,
        "frames_estimate": track.frames,
        "count_method": method,
    }


def count_videos(
    location: Location,
    videos: pd.DataFrame,
    counter: ByteCounter,
    *,
    timeout: float | None = None,
    workers: int = 8,
    isolate: bool = True,
) -> pd.DataFrame:
    """Count the frames of ``videos`` (key, size, ...) on a thread pool; add the :data:`COUNT_COLUMNS`.

    With ``isolate`` each pool thread that has to probe a header with FFmpeg gets its own decoder child
    process (started on first need, all stopped at the end).
    """
    keys = videos["key"].tolist()
    sizes = videos["size"].astype("int64").tolist() if "size" in videos else [None] * len(keys)
    local = threading.local()
    processes: list[DecoderProcess] = []
    lock = threading.Lock()

    def thread_process() -> DecoderProcess | None:
        if not isolate:
            return None
        if getattr(local, "process", None) is None:
            local.process = DecoderProcess()
            with lock:
                processes.append(local.process)
        return local.process

    def work(item: tuple[str, int | None]) -> dict[str, Any]:
        key, size = item
        return count_frames(location, key, size=size, counter=counter, timeout=timeout, process=thread_process())

    progress = Progress("count frames", len(keys), unit="videos", logger=log)
    rows = []
    try:
        for row in ordered_map(work, list(zip(keys, sizes, strict=True)), workers=workers, window=4 * workers):
            rows.append(row)
            progress.update()
    finally:
        for process in processes:
            process.close()
    progress.finish()
    counted = pd.DataFrame(rows, columns=COUNT_COLUMNS, index=videos.index)
    counted = counted.astype(
        {"frames": "Int64", "frames_estimate": "Int64", "width": "Int64", "height": "Int64", "header_bytes": "int64"}
    )
    return pd.concat([videos, counted], axis=1)


def decoding_work(table: pd.DataFrame) -> np.ndarray:
    """Each counted video's expected decoding work: frames (exact or estimated) x pixels per frame.

    A readable video without a frame estimate gets one from its size at the median frames per byte of the
    others (and the median frame size if its own is unknown); a video whose header is unreadable is never
    decoded and weighs 0.
    """
    frames = table["frames_estimate"].astype("float64").to_numpy()
    pixels = (table["width"].astype("float64") * table["height"].astype("float64")).to_numpy()
    size = table["size"].astype("float64").to_numpy() if "size" in table else np.ones(len(table))
    known = np.isfinite(frames) & (size > 0)
    per_byte = float(np.median(frames[known] / size[known])) if known.any() else 1.0
    frames = np.where(np.isfinite(frames), frames, size * per_byte)
    known_pixels = np.isfinite(pixels) & (pixels > 0)
    pixels = np.where(known_pixels, pixels, float(np.median(pixels[known_pixels])) if known_pixels.any() else 1.0)
    work = np.nan_to_num(frames * pixels)
    return np.where(table["header_error"].isna().to_numpy(), work, 0.0)


def balance_shards(work: np.ndarray, n_shards: int) -> np.ndarray:
    """A shard per video so that every shard gets about the same ``work`` (longest processing time first).

    With at least ``n_shards`` videos every shard gets one: ties go to the shard with fewer videos.
    """
    shards = np.zeros(len(work), dtype="int64")
    loads = [(0.0, 0, shard) for shard in range(max(n_shards, 1))]
    for index in np.argsort(-work, kind="stable"):
        load, count, shard = heapq.heappop(loads)
        shards[index] = shard
        heapq.heappush(loads, (load + float(work[index]), count + 1, shard))
    return shards
