"""Dumps of selected frames: exact pixels, formats and sizes, and only the GOPs that hold them are read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lightly_tasks.demo_videos import write_video
from lightly_tasks.frame_dump import dump_frames, dump_name
from lightly_tasks.frame_names import frame_key
from lightly_tasks.storage import ByteCounter, location_from_uri
from lightly_tasks.video import PyAVReader


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    folder = tmp_path_factory.mktemp("src")
    path = write_video(folder / "cams/noisy.mp4", n_frames=90, width=160, height=120, noise=20.0)
    with path.open("rb") as f:
        reader = PyAVReader(f)
        frames = list(reader.frames())
        reader.close()
    videos = pd.DataFrame(
        {"key": ["cams/noisy.mp4"], "size": [path.stat().st_size], "keyframes": [reader.stats.keyframes]}
    )
    return folder, path, frames, videos


def _selected(frames, indices) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "key": [frame_key("cams/noisy.mp4", i) for i in indices],
            "video_key": "cams/noisy.mp4",
            "frame_pts": [frames[i].pts for i in indices],
        }
    )


def test_png_dump_is_pixel_exact_and_reads_only_needed_gops(video, tmp_path: Path) -> None:
    folder, path, frames, videos = video
    indices = [3, 4, 5, 70]
    counter = ByteCounter()
    written = dump_frames(
        location_from_uri(folder.as_uri()),
        location_from_uri(tmp_path.as_uri()),
        _selected(frames, indices),
        videos,
        counter,
    )
    assert written == 4
    for i in indices:
        dumped = np.asarray(Image.open(tmp_path / f"cams/noisy-{i:06d}-mp4.png"))
        np.testing.assert_array_equal(dumped, frames[i].rgb)
    assert 0 < counter.total < 0.6 * path.stat().st_size


def test_jpeg_dump_with_image_size(video, tmp_path: Path) -> None:
    folder, _, frames, videos = video
    dump_frames(
        location_from_uri(folder.as_uri()),
        location_from_uri(tmp_path.as_uri()),
        _selected(frames, [10]),
        videos,
        ByteCounter(),
        fmt="jpeg",
        image_size=40,
    )
    with Image.open(tmp_path / "cams/noisy-000010-mp4.jpg") as image:
        assert (image.format, image.size) == ("JPEG", (40, 30))


def test_without_keyframes_every_frame_is_still_found(video, tmp_path: Path) -> None:
    folder, _, frames, videos = video
    written = dump_frames(
        location_from_uri(folder.as_uri()),
        location_from_uri(tmp_path.as_uri()),
        _selected(frames, [1, 40, 89]),
        videos.assign(keyframes=[[]]),
        ByteCounter(),
    )
    assert written == 3
    np.testing.assert_array_equal(
        np.asarray(Image.open(tmp_path / "cams/noisy-000089-mp4.png")), frames[89].rgb
    )


def test_dump_names_and_escaping_keys(video, tmp_path: Path) -> None:
    assert dump_name("a/b-000001-mp4.png", "jpeg") == "a/b-000001-mp4.jpg"
    folder, _, frames, videos = video
    bad = _selected(frames, [1]).assign(key="../escape-000001-mp4.png")
    counter = ByteCounter()
    with pytest.raises(ValueError, match="escape"):
        dump_frames(
            location_from_uri(folder.as_uri()), location_from_uri(tmp_path.as_uri()), bad, videos, counter
        )
    assert counter.total == 0
