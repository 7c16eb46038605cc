"""The decoding pass over videos: per-video and per-frame verdicts, the cache, stride and the time limit."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lightly_tasks import video_decoding
from lightly_tasks.decoding import iter_cache
from lightly_tasks.demo_videos import build_demo_videos, write_video
from lightly_tasks.frame_counting import count_videos
from lightly_tasks.metadata import METADATA_KEYS
from lightly_tasks.storage import ByteCounter, list_objects, location_from_uri
from lightly_tasks.video import VIDEO_EXTENSIONS
from lightly_tasks.video_decoding import decode_videos


def _counted(folder: Path) -> pd.DataFrame:
    location = location_from_uri(folder.as_uri())
    return count_videos(location, list_objects(location, extensions=VIDEO_EXTENSIONS), ByteCounter())


def _decode(folder: Path, cache: Path, **options):
    defaults = {"image_size": 32, "stride": 1, "timeout": 30.0, "backend": "pyav", "counter": ByteCounter()}
    defaults.update(options)
    return decode_videos(
        location_from_uri(folder.as_uri()), _counted(folder), location_from_uri(cache.as_uri()), **defaults
    )


@pytest.fixture(scope="module")
def demo_pass(tmp_path_factory):
    root = tmp_path_factory.mktemp("pass")
    demo = build_demo_videos(root / "videos")
    counter = ByteCounter()
    frames, verdicts = _decode(root / "videos", root / "cache", counter=counter)
    return root, demo, frames, verdicts.set_index("key"), counter.total


def test_video_verdicts(demo_pass) -> None:
    _, demo, _, verdicts, _ = demo_pass
    for key in demo.good:
        assert verdicts.at[key, "verdict"] == "ok", (key, verdicts.at[key, "reason"])
        assert (verdicts.at[key, "stream_frames"], verdicts.at[key, "n_ok"]) == (40, 40)
        assert verdicts.at[key, "backend"] == "pyav"
    for key, prefix in demo.broken.items():
        assert verdicts.at[key, "verdict"] == "corrupt" and verdicts.at[key, "reason"].startswith(prefix)
    for key in [*demo.damaged, *demo.truncated]:
        assert verdicts.at[key, "verdict"] == "partial"
    truncated = next(iter(demo.truncated))
    assert "frame count mismatch: the header announces 40" in verdicts.at[truncated, "reason"]


def test_frame_rows_name_and_describe_every_frame(demo_pass) -> None:
    _, demo, frames, _, _ = demo_pass
    street = frames[frames["video_key"] == "cams/street_01.mp4"].sort_values("frame_index")
    assert street["key"].tolist() == [f"cams/street_01-{i:06d}-mp4.png" for i in range(40)]
    assert (street["verdict"] == "ok").all() and street["frame_pts"].is_monotonic_increasing
    assert set(METADATA_KEYS) <= set(frames.columns)
    assert street["content_hash"].nunique() == 40, "moving scenes: every frame differs"
    for key in demo.broken:
        rows = frames[frames["video_key"] == key]
        assert len(rows) == 1 and rows["key"].item() == key and rows["frame_index"].item() == -1


def test_bad_frames_are_listed_and_good_frames_kept(demo_pass) -> None:
    _, demo, frames, _, _ = demo_pass
    damaged, index = next(iter(demo.damaged.items()))
    rows = frames[frames["video_key"] == damaged].set_index("frame_index")
    assert rows.at[index, "verdict"] == "corrupt" and rows.at[index, "reason"].startswith("undecodable")
    assert (rows.loc[: index - 2, "verdict"] == "ok").all()
    truncated = next(iter(demo.truncated))
    rows = frames[frames["video_key"] == truncated].set_index("frame_index")
    assert len(rows) == 40 and rows.at[0, "verdict"] == "ok"
    assert rows.at[39, "reason"].startswith("missing: the header announces 40 frames")


def test_cache_holds_one_thumbnail_per_good_frame(demo_pass) -> None:
    root, _, frames, verdicts, total = demo_pass
    parts = list(iter_cache(location_from_uri((root / "cache").as_uri()), frames))
    thumbnails = np.concatenate(parts)
    assert thumbnails.shape == ((frames["verdict"] == "ok").sum(), 32, 32, 3)
    assert total == verdicts["bytes_read"].sum()


def test_stride_samples_every_kth_frame(tmp_path: Path) -> None:
    write_video(tmp_path / "v/a.mp4", n_frames=40)
    frames, verdicts = _decode(tmp_path / "v", tmp_path / "cache", stride=7)
    assert frames["frame_index"].tolist() == list(range(0, 40, 7))
    assert verdicts["stream_frames"].item() == 40 and verdicts["n_samples"].item() == 6


def test_decord_backend_is_recorded(tmp_path: Path) -> None:
    write_video(tmp_path / "v/a.mp4", n_frames=12)
    frames, verdicts = _decode(tmp_path / "v", tmp_path / "cache", backend="decord")
    assert verdicts["backend"].tolist() == ["decord"]
    assert (frames["verdict"] == "ok").sum() == 12


def test_slow_video_is_cut_off_and_keeps_its_frames(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_video(tmp_path / "v/a_slow.mp4", n_frames=40, width=64)
    write_video(tmp_path / "v/b_fine.mp4", n_frames=10, width=32)
    original = video_decoding._frame_result

    def slow(frame, image_size):
        if frame.index >= 3 and frame.rgb is not None and frame.rgb.shape[1] == 64:  # a_slow.mp4
            time.sleep(0.2)
        return original(frame, image_size)

    monkeypatch.setattr(video_decoding, "_frame_result", slow)
    started = time.monotonic()
    frames, verdicts = _decode(tmp_path / "v", tmp_path / "cache", timeout=1.0, isolate=False)
    assert time.monotonic() - started < 5
    verdicts = verdicts.set_index("key")
    assert verdicts.at["a_slow.mp4", "verdict"] == "partial"
    assert verdicts.at["a_slow.mp4", "reason"].startswith("timeout")
    slow_rows = frames[frames["video_key"] == "a_slow.mp4"]
    assert 3 <= (slow_rows["verdict"] == "ok").sum() < 40
    assert slow_rows[slow_rows["verdict"] != "ok"]["reason"].str.startswith("timeout").all()
    assert len(slow_rows) == 40, "the frames never decoded are listed"
    assert verdicts.at["b_fine.mp4", "verdict"] == "ok"


def test_hanging_decoder_does_not_hang_the_shard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_video(tmp_path / "v/a_hangs.mp4", n_frames=10, width=64)
    write_video(tmp_path / "v/b_fine.mp4", n_frames=10, width=32)
    release = threading.Event()
    original = video_decoding._frame_result

    def hang(frame, image_size):
        if frame.rgb is not None and frame.rgb.shape[1] == 64:  # a_hangs.mp4
            release.wait()
        return original(frame, image_size)

    monkeypatch.setattr(video_decoding, "_frame_result", hang)
    try:
        frames, verdicts = _decode(tmp_path / "v", tmp_path / "cache", timeout=0.5, isolate=False)
    finally:
        release.set()
    verdicts = verdicts.set_index("key")
    assert verdicts.at["a_hangs.mp4", "verdict"] == "corrupt"
    assert verdicts.at["a_hangs.mp4", "reason"].startswith("timeout")
    assert verdicts.at["b_fine.mp4", "verdict"] == "ok"
    assert (frames[frames["video_key"] == "b_fine.mp4"]["verdict"] == "ok").sum() == 10


def test_decord_refuses_videos_over_the_memory_limit(tmp_path: Path) -> None:
    write_video(tmp_path / "v/a.mp4", n_frames=12)
    counter = ByteCounter()
    frames, verdicts = _decode(
        tmp_path / "v", tmp_path / "cache", backend="decord", max_object_bytes=100, counter=counter
    )
    assert verdicts["reason"].item().startswith("too large")
    assert frames["key"].tolist() == ["a.mp4"] and counter.total == 0
    _, streamed = _decode(tmp_path / "v", tmp_path / "cache", backend="pyav", max_object_bytes=100)
    assert streamed["verdict"].item() == "ok", "PyAV streams: the memory limit does not apply"
