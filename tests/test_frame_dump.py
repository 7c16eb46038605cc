"""Dumps of selected frames: exact pixels, formats and sizes, and only the GOPs that hold them are read."""

from __future__ import annotations

import errno
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lightly_tasks import frame_dump
from lightly_tasks.decoder_child import CRASH_HOOK_ENV
from lightly_tasks.decoder_process import DecoderProcess, dump_isolated
from lightly_tasks.demo_videos import write_video
from lightly_tasks.frame_dump import dump_frames, dump_name
from lightly_tasks.frame_names import frame_key
from lightly_tasks.ranged_file import Deadline, open_counted
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


@pytest.mark.parametrize("isolate", [True, False], ids=["decoder-child", "in-process"])
def test_png_dump_is_pixel_exact_and_reads_only_needed_gops(video, tmp_path: Path, isolate: bool) -> None:
    folder, path, frames, videos = video
    indices = [3, 4, 5, 70]
    counter = ByteCounter()
    written = dump_frames(
        location_from_uri(folder.as_uri()),
        location_from_uri(tmp_path.as_uri()),
        _selected(frames, indices),
        videos,
        counter,
        isolate=isolate,
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
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "cams/noisy-000089-mp4.png")), frames[89].rgb)


def test_dump_names_and_escaping_keys(video, tmp_path: Path) -> None:
    assert dump_name("a/b-000001-mp4.png", "jpeg") == "a/b-000001-mp4.jpg"
    folder, _, frames, videos = video
    bad = _selected(frames, [1]).assign(key="../escape-000001-mp4.png")
    counter = ByteCounter()
    with pytest.raises(ValueError, match="escape"):
        dump_frames(location_from_uri(folder.as_uri()), location_from_uri(tmp_path.as_uri()), bad, videos, counter)
    assert counter.total == 0


@pytest.mark.parametrize(
    ("marker", "reason"),
    [("crash-sigsegv", "decoder crashed (signal 11, SIGSEGV)"), ("crash-hang", "time limit of 3s exceeded")],
)
def test_a_decoder_crash_or_hang_skips_that_videos_frames_only(
    video, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, marker: str, reason: str
) -> None:
    """Real crashes: the child kills (or hangs) itself after one dumped frame of a marked video (test-only hook)."""
    monkeypatch.setenv(CRASH_HOOK_ENV, "1")
    folder, path, frames, videos = video
    bad_key = f"cams/{marker}.mp4"
    (folder / bad_key).write_bytes(path.read_bytes())
    selected = pd.concat(
        [
            _selected(frames, [2, 50, 80]).assign(key=[frame_key(bad_key, i) for i in (2, 50, 80)], video_key=bad_key),
            _selected(frames, [7, 60]),
        ]
    )
    both = pd.concat([videos, videos.assign(key=bad_key)])
    with caplog.at_level("WARNING", logger="lightly_tasks.frame_dump"):
        written = dump_frames(
            location_from_uri(folder.as_uri()),
            location_from_uri(tmp_path.as_uri()),
            selected,
            both,
            ByteCounter(),
            timeout=3.0,
        )
    assert written == 2 + 1, "the other video's frames and the frame dumped before the crash or hang"
    for i in (7, 60):
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / f"cams/noisy-{i:06d}-mp4.png")), frames[i].rgb)
    assert f"{bad_key}: {reason}; its 2 remaining frame(s) skipped" in caplog.text


def test_an_output_that_cannot_be_written_fails_the_dump(
    video, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write error is not a read error of the video: it is raised, not logged and skipped."""
    folder, _, frames, videos = video

    def full_disk(*args, **kwargs) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(frame_dump.artifacts, "write_bytes", full_disk)
    with pytest.raises(OSError, match="No space left"):
        dump_frames(
            location_from_uri(folder.as_uri()),
            location_from_uri(tmp_path.as_uri()),
            _selected(frames, [3, 4, 70]),
            videos,
            ByteCounter(),
        )


def test_a_child_left_mid_video_is_replaced_before_the_next(video, tmp_path: Path) -> None:
    """A caller that stops reading a dump midway gets a fresh child for the next video, not the old stream."""
    folder, path, frames, videos = video
    location = location_from_uri(folder.as_uri())
    size = path.stat().st_size
    keyframes = [int(k) for k in videos.at[0, "keyframes"]]
    targets = [frames[i].pts for i in (3, 40, 70)]
    with DecoderProcess() as process:
        for attempt in range(2):
            with open_counted(location, "cams/noisy.mp4", size=size, counter=None, block_size=2**16) as f:
                dumped = dump_isolated(
                    process,
                    f,
                    key="cams/noisy.mp4",
                    targets=targets,
                    keyframes=keyframes,
                    fmt="png",
                    image_size=None,
                    buffer_size=2**14,
                    deadline=Deadline(30),
                )
                if attempt == 0:
                    next(dumped)
                    dumped.close()  # abandoned with two frames still to come
                    continue
                received = list(dumped)
        assert [pts for pts, _ in received] == targets
        assert process.starts == 2
    with Image.open(io.BytesIO(received[1][1])) as image:
        np.testing.assert_array_equal(np.asarray(image), frames[40].rgb)
