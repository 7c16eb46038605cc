"""AVI headers read from the hdrl list: the same facts FFmpeg reports, from a few KB, and a fallback for the rest."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import av
import pandas as pd
import pytest

from lightly_tasks.avi_header import AviHeaderError, NotAviError, read_avi_header
from lightly_tasks.demo_videos import truncate, write_video
from lightly_tasks.frame_counting import count_frames
from lightly_tasks.storage import ByteCounter, location_from_uri
from lightly_tasks.video_decoding import decode_videos
from tests.read_tally import TallyFile


def _header(path: Path):
    data = path.read_bytes()
    f = TallyFile(data)
    return read_avi_header(f, len(data)), f.read_bytes


@pytest.mark.parametrize("codec", ["mpeg4", "libx264", "libvpx-vp9", "ffv1", "rawvideo"])
def test_facts_match_what_ffmpeg_reports(tmp_path: Path, codec: str) -> None:
    path = write_video(tmp_path / "v.avi", n_frames=37, width=80, height=64, fps=12, codec=codec)
    track, read = _header(path)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        packets = sum(1 for packet in container.demux(stream) if packet.size)
        expected = (stream.frames, stream.codec_context.name, stream.codec_context.width, stream.codec_context.height)
    assert (track.frames, track.codec, track.width, track.height) == expected == (packets, expected[1], 80, 64)
    assert track.fps == pytest.approx(12.0) and track.duration == pytest.approx(37 / 12)
    assert read == 12 + track.hdrl_bytes, "the RIFF header and the hdrl list, nothing of the frames"


def test_counting_an_avi_reads_a_few_kilobytes(tmp_path: Path) -> None:
    write_video(tmp_path / "v.avi", n_frames=150, width=320, height=240, noise=12.0)
    size = (tmp_path / "v.avi").stat().st_size
    counter = ByteCounter()
    row = count_frames(location_from_uri(tmp_path.as_uri()), "v.avi", size=size, counter=counter)
    assert (row["frames"], row["count_method"], row["container"], row["codec"]) == (150, "avi header", "avi", "mpeg4")
    assert counter.total == row["header_bytes"] < 16 * 2**10 and counter.total / size < 0.05


def test_other_files_are_not_avi(tmp_path: Path) -> None:
    for path in (write_video(tmp_path / "a.mkv", n_frames=5), write_video(tmp_path / "a.mp4", n_frames=5)):
        with pytest.raises(NotAviError):
            _header(path)
    with pytest.raises(NotAviError):
        read_avi_header(io.BytesIO(b"RIFF\x00\x00\x00\x00WAVEfmt "), 16)


def test_malformed_headers_raise_and_counting_falls_back_to_ffmpeg(tmp_path: Path) -> None:
    data = write_video(tmp_path / "v.avi", n_frames=20).read_bytes()
    hdrl_size = struct.unpack_from("<I", data, 16)[0]
    cut = data[: 20 + hdrl_size // 2]
    with pytest.raises(AviHeaderError, match="impossible size"):
        read_avi_header(io.BytesIO(cut), len(cut))
    length_at = data.index(b"strh") + 8 + 32  # strh body: fccType, handler, flags, priority+language,
    no_count = data[:length_at] + b"\0\0\0\0" + data[length_at + 4 :]  # initial frames, scale, rate, start
    with pytest.raises(AviHeaderError, match="no frame count"):
        read_avi_header(io.BytesIO(no_count), len(no_count))
    (tmp_path / "no_count.avi").write_bytes(no_count)
    row = count_frames(location_from_uri(tmp_path.as_uri()), "no_count.avi", size=len(no_count), counter=ByteCounter())
    assert row["count_method"] != "avi header" and row["header_error"] is None, "FFmpeg's probe reads it instead"
    assert row["container"] == "avi" and row["codec"] == "mpeg4"


def test_a_truncated_avi_is_partial_after_decoding(tmp_path: Path) -> None:
    videos = tmp_path / "videos"
    truncate(write_video(videos / "cut.avi", n_frames=40, width=160, height=120, noise=12.0), fraction=0.8)
    location = location_from_uri(videos.as_uri())
    size = (videos / "cut.avi").stat().st_size
    row = count_frames(location, "cut.avi", size=size, counter=ByteCounter())
    assert (row["frames"], row["count_method"]) == (40, "avi header"), "the header survives the cut"
    table = pd.DataFrame([{"key": "cut.avi", "size": size, "etag": "e", **row}])
    _, verdicts = decode_videos(
        location,
        table,
        location_from_uri((tmp_path / "cache").as_uri()),
        image_size=32,
        stride=1,
        timeout=30.0,
        backend="pyav",
        counter=ByteCounter(),
    )
    verdict = verdicts.set_index("key").loc["cut.avi"]
    assert verdict["verdict"] == "partial"
    assert "frame count mismatch: the header announces 40" in verdict["reason"]
