"""Frame counting from container headers: one method per container, few bytes, reasons for bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lightly_tasks.demo_videos import build_demo_videos, write_video
from lightly_tasks.frame_counting import DEFERRED, balance_shards, count_frames, count_videos, decoding_work
from lightly_tasks.storage import ByteCounter, list_objects, location_from_uri
from lightly_tasks.video import VIDEO_EXTENSIONS


@pytest.fixture(scope="module")
def counted(tmp_path_factory) -> tuple[pd.DataFrame, object, int]:
    folder = tmp_path_factory.mktemp("videos")
    demo = build_demo_videos(folder)
    location = location_from_uri(folder.as_uri())
    counter = ByteCounter()
    table = count_videos(location, list_objects(location, extensions=VIDEO_EXTENSIONS), counter, timeout=30)
    return table.set_index("key"), demo, counter.total


def test_every_container_is_counted_with_its_method(counted) -> None:
    table, demo, _ = counted
    for key, frames in demo.good.items():
        assert table.at[key, "frames_estimate"] == frames, key
        if table.at[key, "count_method"] == DEFERRED:
            assert pd.isna(table.at[key, "frames"]), "no exact count without reading the stream"
        else:
            assert table.at[key, "frames"] == frames, key
        assert table.at[key, "fps"] == pytest.approx(30.0)
        assert (table.at[key, "width"], table.at[key, "height"]) == (64, 48)
    methods = table["count_method"].to_dict()
    assert (
        methods["cams/street_01.mp4"]
        == methods["cams/street_02.mp4"]
        == methods["archive/clip.mov"]
        == "mp4 header"
    )
    assert methods["archive/tape.avi"] == "avi header"
    assert methods["drone/field.mkv"] == methods["drone/lake.webm"] == DEFERRED
    assert table.at["drone/lake.webm", "codec"] == "vp9" and table.at["archive/tape.avi", "codec"] == "mpeg4"


def test_broken_headers_get_reasons_and_truncation_is_left_to_decoding(counted) -> None:
    table, demo, _ = counted
    for key, prefix in demo.broken.items():
        assert table.at[key, "header_error"].startswith(prefix), key
        assert pd.isna(table.at[key, "frames"])
    for key, frames in demo.truncated.items():
        assert pd.isna(table.at[key, "header_error"]) and table.at[key, "frames"] == frames


def test_bytes_are_accounted_per_video(counted) -> None:
    table, _, total = counted
    assert table["header_bytes"].sum() == total
    mp4 = table[table["count_method"] == "mp4 header"]
    assert (mp4["header_bytes"] < mp4["size"] / 2).all()


@pytest.mark.parametrize("faststart", [True, False], ids=["moov-first", "moov-last"])
def test_mp4_header_reads_under_five_percent(tmp_path: Path, faststart: bool) -> None:
    write_video(tmp_path / "v.mp4", n_frames=150, width=160, height=120, noise=12.0, faststart=faststart)
    size = (tmp_path / "v.mp4").stat().st_size
    counter = ByteCounter()
    row = count_frames(location_from_uri(tmp_path.as_uri()), "v.mp4", size=size, counter=counter)
    assert (row["frames"], row["count_method"]) == (150, "mp4 header")
    assert counter.total == row["header_bytes"] and counter.total / size < 0.05


def test_a_missing_object_is_a_reason_not_an_exception(tmp_path: Path) -> None:
    row = count_frames(location_from_uri(tmp_path.as_uri()), "gone.mp4", size=1000, counter=ByteCounter())
    assert row["header_error"].startswith("missing")


def test_matroska_is_not_read_whole_to_count(tmp_path: Path) -> None:
    write_video(tmp_path / "v.mkv", n_frames=150, width=160, height=120, noise=12.0)
    size = (tmp_path / "v.mkv").stat().st_size
    counter = ByteCounter()
    row = count_frames(location_from_uri(tmp_path.as_uri()), "v.mkv", size=size, counter=counter)
    assert (row["count_method"], row["frames"], row["frames_estimate"]) == (DEFERRED, None, 150)
    assert counter.total / size < 0.25, "the header probe reads a few packets, not the stream"


def test_shards_are_balanced_by_decoding_work() -> None:
    table = pd.DataFrame(
        {
            "key": list("abcdefg"),
            "size": [1000, 1000, 1000, 1000, 1000, 500, 10],
            "frames_estimate": pd.array([900, 100, 100, 100, 100, None, None], dtype="Int64"),
            "width": pd.array([64] * 5 + [None, None], dtype="Int64"),
            "height": pd.array([48] * 5 + [None, None], dtype="Int64"),
            "header_error": [None] * 6 + ["unreadable container: x"],
        }
    )
    work = decoding_work(table)
    assert work[5] == pytest.approx(50 * 64 * 48), "unknown count: the others' frames per byte"
    assert work[6] == 0, "an unreadable video is never decoded"
    shards = balance_shards(work, 2)
    assert shards.tolist() == [0, 1, 1, 1, 1, 1, 1], "the long video alone; the short ones together"
    assert sorted(set(balance_shards(np.zeros(3), 3).tolist())) == [0, 1, 2], "every shard gets a video"


def test_time_limit_applies_to_header_probes(tmp_path: Path) -> None:
    write_video(tmp_path / "v.mkv", n_frames=20)
    row = count_frames(
        location_from_uri(tmp_path.as_uri()), "v.mkv", size=None, counter=ByteCounter(), timeout=1e-9
    )
    assert row["header_error"].startswith("timeout")
