"""MP4/MOV headers walked box by box: the frame count and stream facts, and how few bytes that reads."""

from __future__ import annotations

import io
from pathlib import Path

import av
import pytest

from lightly_tasks.demo_videos import truncate, write_video
from lightly_tasks.mp4_header import Mp4HeaderError, NotMp4Error, read_mp4_header
from tests.read_tally import TallyFile


def _header(path: Path):
    data = path.read_bytes()
    f = TallyFile(data)
    return read_mp4_header(f, len(data)), f.read_bytes, len(data)


@pytest.mark.parametrize("faststart", [True, False], ids=["moov-first", "moov-last"])
def test_counts_frames_from_moov_at_either_end(tmp_path: Path, faststart: bool) -> None:
    path = write_video(tmp_path / "a.mp4", n_frames=45, width=80, height=64, fps=25, faststart=faststart)
    track, read, _ = _header(path)
    assert (track.frames, track.width, track.height, track.codec) == (45, 80, 64, "h264")
    assert track.fps == pytest.approx(25.0)
    assert track.duration == pytest.approx(45 / 25)
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == track.frames
    assert read <= track.moov_bytes + 64, "only box headers and the moov body are read"


def test_reads_under_five_percent_of_a_realistic_video(tmp_path: Path) -> None:
    path = write_video(tmp_path / "big.mp4", n_frames=150, width=160, height=120, noise=12.0)
    track, read, size = _header(path)
    assert track.frames == 150
    assert read / size < 0.05


def test_mov_and_hevc(tmp_path: Path) -> None:
    mov, _, _ = _header(write_video(tmp_path / "a.mov", n_frames=12))
    hevc, _, _ = _header(write_video(tmp_path / "h.mp4", n_frames=12, codec="libx265"))
    assert (mov.frames, mov.codec) == (12, "h264")
    assert (hevc.frames, hevc.codec) == (12, "hevc")


def test_other_containers_are_not_mp4(tmp_path: Path) -> None:
    for path in (write_video(tmp_path / "a.mkv", n_frames=5), write_video(tmp_path / "a.avi", n_frames=5)):
        with pytest.raises(NotMp4Error):
            _header(path)
    with pytest.raises(NotMp4Error):
        read_mp4_header(io.BytesIO(b"\x00\x01garbage" * 100), 900)


def test_broken_files_get_verdict_reasons(tmp_path: Path) -> None:
    cut = write_video(tmp_path / "cut.mp4", n_frames=20)  # moov at the end: cut off with the second half
    truncate(cut)
    with pytest.raises(Mp4HeaderError, match=r"^unreadable container: no moov box"):
        _header(cut)
    empty = write_video(tmp_path / "empty.mp4", n_frames=0)
    with pytest.raises(Mp4HeaderError, match=r"^zero frames"):
        _header(empty)


def test_truncated_faststart_file_still_reports_the_header_count(tmp_path: Path) -> None:
    path = write_video(tmp_path / "t.mp4", n_frames=30, faststart=True)
    truncate(path)
    track, _, _ = _header(path)
    assert track.frames == 30  # the stream disagrees; the decoding pass finds out
