"""Decoding in a child process: real crashes and hangs of the decoder become verdicts; the shard goes on.

The crashes are real: the child process kills itself with SIGSEGV / os.abort() / SIGKILL through the test-only
hook of :mod:`lightly_tasks.decoder_child` (enabled by ``LIGHTLY_TEST_DECODER_CRASH=1``, for keys containing a
``crash-*`` marker), after it has already sent frames of that video.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lightly_tasks.decoder_child import CRASH_HOOK_ENV, OOM_SCORE_ADJ
from lightly_tasks.decoder_process import DecoderProcess, describe_exit
from lightly_tasks.decoding import iter_cache
from lightly_tasks.demo_videos import build_demo_videos, truncate, write_video
from lightly_tasks.frame_counting import count_videos
from lightly_tasks.storage import ByteCounter, list_objects, location_from_uri
from lightly_tasks.video import VIDEO_EXTENSIONS
from lightly_tasks.video_decoding import decode_videos


def _decode(folder: Path, cache: Path, *, timeout: float = 30.0, isolate: bool = True, counter=None):
    location = location_from_uri(folder.as_uri())
    counted = count_videos(location, list_objects(location, extensions=VIDEO_EXTENSIONS), ByteCounter())
    return decode_videos(
        location,
        counted,
        location_from_uri(cache.as_uri()),
        image_size=32,
        stride=1,
        timeout=timeout,
        backend="pyav",
        counter=counter if counter is not None else ByteCounter(),
        isolate=isolate,
    )


def test_crashing_decoders_become_verdicts_and_the_shard_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CRASH_HOOK_ENV, "1")
    videos = tmp_path / "v"
    write_video(videos / "a_before.mp4", n_frames=20, seed=1)
    write_video(videos / "b_crash-sigsegv.mp4", n_frames=20, seed=2)
    write_video(videos / "c_crash-sigabrt.mkv", n_frames=20, seed=3)
    write_video(videos / "d_crash-sigkill.mp4", n_frames=20, seed=4)
    write_video(videos / "e_after.webm", n_frames=20, seed=5)
    frames, verdicts = _decode(videos, tmp_path / "cache")
    verdicts = verdicts.set_index("key")
    expected = {
        "b_crash-sigsegv.mp4": "decoder crashed (signal 11, SIGSEGV)",
        "c_crash-sigabrt.mkv": "decoder crashed (signal 6, SIGABRT)",
        "d_crash-sigkill.mp4": "decoder crashed (signal 9, SIGKILL)",
    }
    for key, reason in expected.items():
        assert (verdicts.at[key, "verdict"], verdicts.at[key, "reason"]) == ("corrupt", reason)
        rows = frames[frames["video_key"] == key]
        assert rows["key"].tolist() == [key], "a crashed video is one corrupt row, its frames are dropped"
        assert rows["reason"].item() == reason
    for key in ("a_before.mp4", "e_after.webm"):
        assert verdicts.at[key, "verdict"] == "ok", verdicts.at[key, "reason"]
        assert verdicts.at[key, "n_ok"] == verdicts.at[key, "stream_frames"] == 20
    ok = frames[frames["verdict"] == "ok"]
    assert len(ok) == 40
    thumbnails = np.concatenate(list(iter_cache(location_from_uri((tmp_path / "cache").as_uri()), frames)))
    assert thumbnails.shape == (40, 32, 32, 3), "the cache rows of the kept frames are intact"


def test_a_hanging_decoder_is_killed_at_the_time_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CRASH_HOOK_ENV, "1")
    videos = tmp_path / "v"
    write_video(videos / "a_crash-hang.mp4", n_frames=20, seed=1)
    write_video(videos / "b_fine.mp4", n_frames=20, seed=2)
    started = time.monotonic()
    frames, verdicts = _decode(videos, tmp_path / "cache", timeout=2.0)
    assert time.monotonic() - started < 20, "the hang ended at the time limit, not after an hour"
    verdicts = verdicts.set_index("key")
    assert verdicts.at["a_crash-hang.mp4", "verdict"] == "partial"
    assert verdicts.at["a_crash-hang.mp4", "reason"].startswith("timeout")
    hung = frames[frames["video_key"] == "a_crash-hang.mp4"].set_index("frame_index")
    assert len(hung) == 20 and (hung.loc[:1, "verdict"] == "ok").all(), "frames sent before the hang are kept"
    assert hung.loc[2:, "reason"].str.startswith("timeout").all()
    assert verdicts.at["b_fine.mp4", "verdict"] == "ok" and verdicts.at["b_fine.mp4", "n_ok"] == 20


def test_isolated_and_in_process_decoding_give_the_same_tables(tmp_path: Path) -> None:
    videos = tmp_path / "v"
    build_demo_videos(videos, n_frames=16)
    write_video(videos / "cut.mkv", n_frames=40)
    truncate(videos / "cut.mkv", 0.6)
    counters = ByteCounter(), ByteCounter()
    isolated, isolated_verdicts = _decode(videos, tmp_path / "c1", counter=counters[0])
    in_process, in_process_verdicts = _decode(videos, tmp_path / "c2", isolate=False, counter=counters[1])
    pd.testing.assert_frame_equal(isolated, in_process)
    columns = ["key", "verdict", "reason", "stream_frames", "n_ok", "n_bad", "keyframes", "bytes_read"]
    pd.testing.assert_frame_equal(isolated_verdicts[columns], in_process_verdicts[columns])
    assert counters[0].total == counters[1].total == isolated_verdicts["bytes_read"].sum()
    cut = isolated_verdicts.set_index("key").loc["cut.mkv"]
    assert cut["verdict"] == "partial"
    assert "the header's duration and frame rate imply about 40 frames" in cut["reason"]


def test_a_crash_while_probing_a_header_is_that_videos_header_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CRASH_HOOK_ENV, "1")
    videos = tmp_path / "v"
    write_video(videos / "a.mkv", n_frames=20)
    write_video(videos / "b_crash-sigsegv.webm", n_frames=20)
    write_video(videos / "c.avi", n_frames=20)
    location = location_from_uri(videos.as_uri())
    listed = list_objects(location, extensions=VIDEO_EXTENSIONS)
    counted = count_videos(location, listed, ByteCounter(), workers=2).set_index("key")
    assert counted.at["b_crash-sigsegv.webm", "header_error"] == "decoder crashed (signal 11, SIGSEGV)"
    assert counted.at["a.mkv", "frames_estimate"] == counted.at["c.avi", "frames"] == 20
    assert counted[["header_error"]].drop("b_crash-sigsegv.webm").isna().all().all()
    in_process = count_videos(location, listed.iloc[[0, 2]], ByteCounter(), isolate=False).set_index("key")
    columns = ["frames", "frames_estimate", "count_method", "codec", "width", "height", "header_bytes"]
    pd.testing.assert_frame_equal(in_process[columns], counted.loc[["a.mkv", "c.avi"], columns])


def test_exit_descriptions() -> None:
    assert describe_exit(-11) == "signal 11, SIGSEGV"
    assert describe_exit(3) == "exit status 3"


def test_the_child_holds_no_credentials_and_is_the_oom_killers_first_pick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "child-must-not-see-this")
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", "aws://AKIA:child-must-not-see-this@")
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    process = DecoderProcess()
    process.connections()
    try:
        pid = process.pid
        assert pid is not None
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        assert b"child-must-not-see-this" not in environ
        assert b"LC_ALL=C.UTF-8" in environ.split(b"\0"), "the locale is kept"
        assert b"OPENBLAS_NUM_THREADS=1" in environ.split(b"\0"), "no BLAS thread pool per child"
        assert int(Path(f"/proc/{pid}/oom_score_adj").read_text()) == OOM_SCORE_ADJ
    finally:
        process.kill()
    assert process.pid is None
