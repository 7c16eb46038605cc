"""The video reader interface (PyAV and decord backends) and the counted, deadline-checked ranged file."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pytest
from fsspec import AbstractFileSystem
from fsspec.spec import AbstractBufferedFile

from lightly_tasks.demo_videos import damage_frame, truncate, write_video
from lightly_tasks.ranged_file import CountedFile, Deadline, DeadlineExceeded, open_counted
from lightly_tasks.storage import ByteCounter, Location, location_from_uri
from lightly_tasks.video import DecordReader, PyAVReader, VideoOpenError, open_reader, probe


class _RangedFile(AbstractBufferedFile):
    def _fetch_range(self, start: int, end: int) -> bytes:
        self.fs.fetches.append((start, end))
        with open(self.path, "rb") as f:
            f.seek(start)
            return f.read(end - start)


class _RangedFS(AbstractFileSystem):
    """A local folder served like an object store: every cache miss is one ranged fetch, recorded."""

    cachable = False

    def __init__(self) -> None:
        super().__init__()
        self.fetches: list[tuple[int, int]] = []

    def info(self, path: str, **kwargs) -> dict:
        return {"name": path, "size": Path(path).stat().st_size, "type": "file"}

    def _open(self, path: str, mode: str = "rb", block_size: int | None = None, **kwargs) -> _RangedFile:
        return _RangedFile(self, path, mode, block_size or 2**20, **kwargs)


def _frames(path: Path, stride: int = 1) -> tuple[PyAVReader, list]:
    with path.open("rb") as f:
        reader = PyAVReader(f)
        frames = list(reader.frames(stride))
        reader.close()
    return reader, frames


@pytest.fixture(scope="module")
def realistic(tmp_path_factory) -> Path:
    """160x120, 90 frames with noise (~300 KB), GOPs of 30 frames."""
    return write_video(
        tmp_path_factory.mktemp("v") / "noisy.mp4", n_frames=90, width=160, height=120, noise=20.0
    )


def test_counted_file_counts_what_the_store_sends(realistic: Path) -> None:
    fs = _RangedFS()
    location = Location(fs=fs, root=str(realistic.parent), uri="ranged://test")
    counter = ByteCounter()
    with open_counted(
        location, realistic.name, size=realistic.stat().st_size, counter=counter, block_size=64 * 1024
    ) as f:
        f.seek(100_000)
        assert len(f.read(10)) == 10
    assert fs.fetches == [(65536, 131072)]  # the one aligned block that holds the read
    assert counter.total == sum(end - start for start, end in fs.fetches) == f.bytes_read
    assert counter.total > 10, "read-ahead is counted: it crossed the network"


def test_counted_file_on_a_local_folder_counts_bytes_read(realistic: Path) -> None:
    counter = ByteCounter()
    location = location_from_uri(realistic.parent.as_uri())
    with open_counted(location, realistic.name, size=None, counter=counter, block_size=4096) as f:
        f.seek(10)
        buffer = bytearray(100)
        assert f.readinto(buffer) == 100
        assert f.read(50) == realistic.read_bytes()[110:160]
    assert counter.total == 150


def test_deadline_stops_reads() -> None:
    expired = Deadline(0.01)
    time.sleep(0.02)
    with pytest.raises(DeadlineExceeded, match="time limit"):
        CountedFile(io.BytesIO(b"abc"), deadline=expired).read(1)
    cancelled = Deadline(None)
    cancelled.cancel()
    with pytest.raises(DeadlineExceeded, match="cancelled"):
        CountedFile(io.BytesIO(b"abc"), deadline=cancelled).seek(1)
    assert Deadline(None).remaining() is None


def test_pyav_yields_every_frame_in_presentation_order(tmp_path: Path) -> None:
    path = write_video(tmp_path / "a.mp4", n_frames=30, width=64, height=48, gop=10)
    reader, frames = _frames(path)
    assert [f.index for f in frames] == list(range(30))
    assert [f.pts for f in frames] == sorted(f.pts for f in frames)
    assert frames[0].keyframe and frames[0].time == 0.0
    assert all(f.rgb is not None and f.rgb.shape == (48, 64, 3) and f.error is None for f in frames)
    assert all(f.packet_size > 0 for f in frames)
    assert (reader.stats.frames, reader.stats.bad) == (30, 0)
    assert reader.stats.keyframes[0] == 0 and len(reader.stats.keyframes) >= 3
    assert (reader.info.frames, reader.info.codec, reader.info.fps) == (30, "h264", 30.0)
    _, strided = _frames(path, stride=4)
    assert [f.index for f in strided] == list(range(0, 30, 4))
    assert all(np.array_equal(s.rgb, frames[s.index].rgb) for s in strided)


def test_a_damaged_packet_costs_only_its_gop(tmp_path: Path) -> None:
    pristine = write_video(tmp_path / "ok.mp4", n_frames=40, gop=10, seed=3)
    damaged = write_video(tmp_path / "bad.mp4", n_frames=40, gop=10, seed=3)
    damage_frame(damaged, 21)
    _, good = _frames(pristine)
    reader, frames = _frames(damaged)
    assert len(frames) == 40
    assert frames[21].rgb is None and frames[21].error.startswith("undecodable")
    bad = {f.index for f in frames if f.error}
    assert 21 in bad and bad <= set(range(20, 30)), bad
    assert all(f.error.startswith("damaged") for f in frames if f.index in bad - {21})
    for f in frames:
        if f.index not in bad and (f.index < 20 or f.index >= 30):
            np.testing.assert_array_equal(f.rgb, good[f.index].rgb)
    assert reader.stats.bad == len(bad)


def test_truncated_stream_ends_early_without_raising(tmp_path: Path) -> None:
    path = write_video(tmp_path / "t.mp4", n_frames=40, faststart=True)
    truncate(path)
    reader, frames = _frames(path)
    assert reader.info.frames == 40
    assert 0 < reader.stats.frames < 40
    assert frames[0].rgb is not None


def test_unreadable_and_empty_containers(tmp_path: Path) -> None:
    with pytest.raises(VideoOpenError, match=r"^unreadable container"):
        PyAVReader(io.BytesIO(b"\x00" * 4000))
    empty = write_video(tmp_path / "e.mp4", n_frames=0)
    with empty.open("rb") as f, pytest.raises(VideoOpenError, match=r"^zero frames"):
        probe(f)


def test_matroska_header_has_no_frame_count_but_an_estimate(tmp_path: Path) -> None:
    path = write_video(tmp_path / "a.mkv", n_frames=25)
    with path.open("rb") as f:
        info = probe(f)
    assert info.frames == 0 and round(info.duration * info.fps) == 25


def test_frames_at_reads_only_the_gops_it_needs(realistic: Path) -> None:
    _, frames = _frames(realistic)
    reader_all, _ = _frames(realistic)
    keyframes = reader_all.stats.keyframes
    targets = [frames[i].pts for i in (4, 5, 65)]
    counter = ByteCounter()
    location = location_from_uri(realistic.parent.as_uri())
    with open_counted(
        location, realistic.name, size=realistic.stat().st_size, counter=counter, block_size=16 * 1024
    ) as f:
        reader = PyAVReader(f, buffer_size=16 * 1024, threads=False)
        got = dict(reader.frames_at(targets, keyframes))
        reader.close()
    for i in (4, 5, 65):
        np.testing.assert_array_equal(got[frames[i].pts], frames[i].rgb)
    assert counter.total < 0.6 * realistic.stat().st_size


def test_decord_backend_matches_pyav(tmp_path: Path) -> None:
    path = write_video(tmp_path / "a.mp4", n_frames=20, gop=10)
    _, reference = _frames(path)
    with path.open("rb") as f:
        reader = open_reader("decord", f)
        frames = list(reader.frames(stride=2))
    assert isinstance(reader, DecordReader) and reader.backend == "decord"
    assert [f.index for f in frames] == list(range(0, 20, 2))
    assert [f.pts for f in frames] == [reference[i].pts for i in range(0, 20, 2)]
    for f in frames:
        assert np.abs(f.rgb.astype(int) - reference[f.index].rgb.astype(int)).mean() < 3.0
    assert reader.stats.keyframes == [r.pts for r in reference if r.keyframe]
