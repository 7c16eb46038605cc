"""The video side of the curation stages (input_type: videos); :mod:`lightly_tasks.pipeline` calls these.

Samples are frames. The datapool and the listing work on video objects; the decoding pass writes one table
row per sampled frame (same columns and cache format as images, plus ``video_key``, ``frame_index``,
``frame_pts``, ``frame_time``), so embedding and selection run unchanged over frames.

Artifacts: ``frame_counting/videos.parquet`` (+ ``manifest.json``), ``corruptness/shard-N.parquet`` (frames)
and ``corruptness/videos-shard-N.parquet`` (one verdict per video, with its backend, keyframes and bytes).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from lightly_tasks import artifacts
from lightly_tasks.frame_counting import DEFERRED, balance_shards, count_videos, decoding_work
from lightly_tasks.frame_dump import dump_frames
from lightly_tasks.sequences import sequence_information
from lightly_tasks.storage import ByteCounter, Location
from lightly_tasks.video_decoding import decode_videos

if TYPE_CHECKING:
    from lightly_tasks.pipeline import Manifest, RunContext

VIDEOS_TABLE = "frame_counting/videos.parquet"
VIDEO_REPORT_TABLE = "corruptness/videos.parquet"
UNREAD_PREFIXES = ("missing:", "read error:")
"""Reasons of videos that were not (fully) read: left out of the datapool so the next run retries them."""


def frame_counting_stage(ctx: RunContext) -> Manifest:
    """Count every listed video's frames from its header; writes ``frame_counting/videos.parquet``.

    The listing split the videos into shards by count; knowing their frames now, this stage reassigns them
    to the same number of shards by decoding work (:func:`~lightly_tasks.frame_counting.balance_shards`),
    so the mapped decoding tasks take about equally long. The manifest reports the balance (largest shard's
    work / mean) of both splits: ``shard_balance`` and ``shard_balance_by_count``.
    """
    started = time.monotonic()
    objects = artifacts.read_table(ctx.run, "list/objects.parquet")
    counter = ByteCounter()
    video = ctx.config.video
    table = count_videos(
        ctx.datasource, objects, counter, timeout=video.timeout_seconds, isolate=video.isolate_decoder
    )
    n_shards = int(objects["shard"].max()) + 1 if len(objects) else 0
    work = decoding_work(table) if len(table) else np.zeros(0)
    listed_work = np.bincount(table["shard"], weights=work, minlength=n_shards) if len(table) else np.zeros(0)
    if len(table):
        table["shard"] = balance_shards(work, n_shards)
    uri = artifacts.write_table(ctx.run, VIDEOS_TABLE, table)
    estimates = table["frames_estimate"].astype("float64").fillna(0).to_numpy() if len(table) else None
    shard_work = np.bincount(table["shard"], weights=work, minlength=n_shards) if len(table) else np.zeros(0)
    video_bytes = int(objects["size"].sum()) if len(objects) else 0
    methods = table["count_method"].value_counts().to_dict() if len(table) else {}
    manifest = {
        "stage": "frame_counting",
        "videos_uri": uri,
        "n_videos": len(table),
        "n_frames": int(table["frames"].fillna(0).sum()) if len(table) else 0,
        "n_frames_estimated": int(table.loc[table["frames"].isna(), "frames_estimate"].fillna(0).sum())
        if len(table)
        else 0,
        "shard_frames": [int(f) for f in np.bincount(table["shard"], weights=estimates, minlength=n_shards)]
        if len(table)
        else [],
        "shard_balance": round(float(shard_work.max() / shard_work.mean()), 3) if shard_work.sum() else None,
        "shard_balance_by_count": round(float(listed_work.max() / listed_work.mean()), 3)
        if listed_work.sum()
        else None,
        "n_unreadable": int(table["header_error"].notna().sum()) if len(table) else 0,
        "count_methods": {str(k): int(v) for k, v in methods.items()},
        "video_bytes": video_bytes,
        "bytes_read": counter.total,
        "read_ratio": round(counter.total / video_bytes, 5) if video_bytes else None,
        "seconds": round(time.monotonic() - started, 3),
    }
    artifacts.write_json(ctx.run, "frame_counting/manifest.json", manifest)
    return manifest


def corruptness_stage(ctx: RunContext, shard: int) -> Manifest:
    """The decoding pass over a shard of videos: frame verdicts, metadata and the decoded cache."""
    started = time.monotonic()
    cfg = ctx.config
    videos = artifacts.read_table(ctx.run, VIDEOS_TABLE)
    videos = videos[videos["shard"] == shard].reset_index(drop=True)
    artifacts.remove(
        ctx.run, f"cache/shard-{shard:05d}"
    )  # a retry must not leave parts of an earlier attempt
    counter = ByteCounter()
    frames, verdicts = decode_videos(
        ctx.datasource,
        videos,
        ctx.run.child("cache", f"shard-{shard:05d}"),
        image_size=cfg.embedding.image_size,
        stride=cfg.video.frame_stride,
        timeout=cfg.video.timeout_seconds,
        backend=cfg.video.backend,
        counter=counter,
        max_object_bytes=cfg.max_object_bytes,
        isolate=cfg.video.isolate_decoder,
    )
    uri = artifacts.write_table(ctx.run, f"corruptness/shard-{shard:05d}.parquet", frames)
    videos_uri = artifacts.write_table(ctx.run, f"corruptness/videos-shard-{shard:05d}.parquet", verdicts)
    n_corrupt = int((frames["verdict"] != "ok").sum()) if len(frames) else 0
    decoded = verdicts["stream_frames"].fillna(0).sum() if len(verdicts) else 0
    decode_seconds = verdicts["decode_seconds"].fillna(0).sum() if len(verdicts) else 0
    return {
        "stage": "corruptness",
        "shard": shard,
        "table_uri": uri,
        "videos_uri": videos_uri,
        "n_objects": len(verdicts),
        "n_frames": len(frames) - int((frames["frame_index"] < 0).sum()) if len(frames) else 0,
        "n_ok": len(frames) - n_corrupt,
        "n_corrupt": n_corrupt,
        "n_corrupt_videos": int((verdicts["verdict"] == "corrupt").sum()) if len(verdicts) else 0,
        "backends": {str(k): int(v) for k, v in verdicts["backend"].value_counts().items()},
        "decoded_frames_per_second": round(float(decoded / decode_seconds), 1) if decode_seconds else None,
        "bytes_read": counter.total,
        "seconds": round(time.monotonic() - started, 3),
    }


def video_verdicts(ctx: RunContext, shards: Sequence[int]) -> pd.DataFrame:
    """The per-video verdicts of all shards, joined to the frame-counting table (one row per video).

    ``frames_counted`` is the exact frame count: the header's, or for a header without one (count method
    "decoding pass") the number of frames the decoding pass demuxed.
    """
    tables = [artifacts.read_table(ctx.run, f"corruptness/videos-shard-{s:05d}.parquet") for s in shards]
    verdicts = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=["key"])
    counted = artifacts.read_table(ctx.run, VIDEOS_TABLE)
    videos = counted.merge(verdicts, on="key", how="left", validate="one_to_one")
    deferred = videos["count_method"] == DEFERRED
    stream = pd.to_numeric(videos["stream_frames"], errors="coerce").astype("Int64")
    videos["frames_counted"] = videos["frames"].astype("Int64").where(~deferred, stream)
    return videos


def processed_videos(videos: pd.DataFrame) -> pd.DataFrame:
    """The datapool entries (key, etag) of a run: every video that was read, whatever its verdict."""
    reason = videos["reason"].fillna("").astype(str)
    return videos.loc[~reason.str.startswith(UNREAD_PREFIXES), ["key", "etag"]].reset_index(drop=True)


def frame_counting_figures(ctx: RunContext) -> dict[str, Any]:
    """The frame-counting stage's figures for ``report.json`` (read back from its manifest)."""
    manifest = artifacts.read_json(ctx.run, "frame_counting/manifest.json")
    return {
        "bytesRead": int(manifest["bytes_read"]),
        "seconds": float(manifest["seconds"]),
        "tasks": 1,
        "readRatio": manifest["read_ratio"],
        "countMethods": manifest["count_methods"],
    }


def dump(
    ctx: RunContext, output: Location, selected: pd.DataFrame, videos: pd.DataFrame, counter: ByteCounter
) -> int:
    """Write the selected frames to ``output`` as ``dump.format`` images (reading only their GOPs)."""
    cfg, video = ctx.config.dump, ctx.config.video
    return dump_frames(
        ctx.datasource,
        output,
        selected,
        videos,
        counter,
        fmt=cfg.format,
        image_size=cfg.image_size,
        timeout=video.timeout_seconds,
        isolate=video.isolate_decoder,
    )


def report_sections(ctx: RunContext, selected: pd.DataFrame, videos: pd.DataFrame) -> dict[str, Any]:
    """What a video run adds to ``report.json``: ``videos`` (counts, verdicts, backends) and
    ``sequence_information`` (the selected sequences, as the Lightly Worker reports them). The per-video
    table (listing, header facts, exact frame count, verdict, reason, bytes) is written to
    :data:`VIDEO_REPORT_TABLE` and named by ``videos.table``."""
    verdict = videos["verdict"].fillna("corrupt") if len(videos) else pd.Series(dtype=object)
    problems = videos.loc[verdict != "ok", ["key", "verdict", "reason"]] if len(videos) else videos
    table = videos.drop(columns=["keyframes"], errors="ignore")
    return {
        "videos": {
            "table": artifacts.write_table(ctx.run, VIDEO_REPORT_TABLE, table),
            "nVideos": len(videos),
            "nOk": int((verdict == "ok").sum()),
            "nPartial": int((verdict == "partial").sum()),
            "nCorrupt": int((verdict == "corrupt").sum()),
            "nFramesHeader": int(videos["frames"].fillna(0).sum()) if len(videos) else 0,
            "nFramesCounted": int(videos["frames_counted"].fillna(0).sum()) if len(videos) else 0,
            "nFramesDecoded": int(videos["stream_frames"].fillna(0).sum()) if len(videos) else 0,
            "frameStride": ctx.config.video.frame_stride,
            "backends": {str(k): int(v) for k, v in videos["backend"].value_counts().items()}
            if len(videos)
            else {},
            "countMethods": {str(k): int(v) for k, v in videos["count_method"].value_counts().items()}
            if len(videos)
            else {},
            "problems": json.loads(problems.to_json(orient="records")),
        },
        "sequence_information": sequence_information(selected, ctx.config.selected_sequence_length),
    }
