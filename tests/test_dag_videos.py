"""The whole ``lightly_curation`` DAG on real videos (every container, broken ones too), via ``dag.test()``.

One module-scoped scenario: a first run selecting sequences of frames with a dump, then a datapool rerun
after one video was added and one replaced. Videos are tiny (64x48, 40 frames) so both runs take ~30 s.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lightly_tasks.artifacts import safe_run_id
from lightly_tasks.demo_videos import build_demo_videos, write_video
from lightly_tasks.frame_names import parse_frame_key
from lightly_tasks.store import DatasetStore
from lightly_tasks.video import PyAVReader
from tests.airflow_dags import load_dag

pytestmark = pytest.mark.dag

N_SAMPLES = 12
SEQUENCE = 4


def _report(root: Path, run_id: str) -> dict[str, Any]:
    from lightly_tasks.artifacts import safe_run_id

    return json.loads(
        (root / "artifacts" / "vids" / "runs" / safe_run_id(run_id) / "report.json").read_text()
    )


def _lines(uri: str) -> list[str]:
    return [line for line in Path(uri.removeprefix("file://")).read_text().split("\n") if line]


def _decoded_frames(path: Path) -> list[np.ndarray | None]:
    with path.open("rb") as f:
        reader = PyAVReader(f)
        try:
            return [frame.rgb for frame in reader.frames()]
        finally:
            reader.close()


@pytest.fixture(scope="module")
def scenario(tmp_path_factory, airflow_db) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("videos")
    videos = root / "videos"
    demo = build_demo_videos(videos)
    conf = {
        "datasource": {"uri": videos.as_uri()},
        "dataset": "vids",
        "input_type": "videos",
        "stopping_condition": {"n_samples": N_SAMPLES},
        "selected_sequence_length": SEQUENCE,
        "artifacts_root": (root / "artifacts").as_uri(),
        "store_url": f"sqlite:///{root / 'store.db'}",
        "dump": {"output": (root / "dump").as_uri()},
        "embedding": {"image_size": 32},
        "video": {"timeout_seconds": 60},
        "num_shards": 2,
    }
    dag = load_dag("lightly_curation")
    first = dag.test(run_conf=conf)
    store = DatasetStore(conf["store_url"])
    seen_after_first = store.seen_objects("vids", videos.as_uri())
    samples_after_first = store.samples("vids")
    write_video(videos / "new/harbour.mp4", n_frames=40, seed=41, faststart=True)
    write_video(videos / "cams/street_02.mp4", n_frames=40, seed=42)  # replaced: new etag
    second = dag.test(run_conf={**conf, "dump": {}, "selected_sequence_length": 1})
    samples_after_second = store.samples("vids")
    store.close()
    return {
        "root": root,
        "videos": videos,
        "demo": demo,
        "first": first,
        "second": second,
        "seen_after_first": seen_after_first,
        "samples_after_first": samples_after_first,
        "samples_after_second": samples_after_second,
    }


def test_first_run_counts_videos_and_frames(scenario):
    assert scenario["first"].state == "success"
    report = _report(scenario["root"], scenario["first"].run_id)
    demo = scenario["demo"]
    n_videos = len(demo.good) + len(demo.broken) + len(demo.damaged) + len(demo.truncated)
    summary = report["videos"]
    assert report["datasetSizes"]["nInput"] == n_videos == summary["nVideos"]
    assert summary["nCorrupt"] == len(demo.broken)
    assert summary["nPartial"] == len(demo.damaged) + len(demo.truncated)
    assert summary["backends"] == {"pyav": n_videos - len(demo.broken)}
    assert summary["countMethods"] == {"mp4 header": 5, "avi header": 1, "decoding pass": 2}
    assert report["datasetSizes"]["nSelected"] == N_SAMPLES
    frame_counting = report["stages"]["frame_counting"]
    assert 0 < frame_counting["bytesRead"] < report["traffic"]["datasourceBytes"]
    run = scenario["root"] / "artifacts" / "vids" / "runs" / safe_run_id(scenario["first"].run_id)
    counting = json.loads((run / "frame_counting" / "manifest.json").read_text())
    assert len(counting["shard_frames"]) == 2 and min(counting["shard_frames"]) > 0
    assert sum(counting["shard_frames"]) == sum(demo.good.values()) + 2 * 40, "estimates of all readable videos"
    assert counting["shard_balance"] <= counting["shard_balance_by_count"]


def test_broken_videos_and_bad_frames_are_listed_with_reasons(scenario):
    report = _report(scenario["root"], scenario["first"].run_id)
    corrupt = set(_lines(report["outputs"]["corrupt_filenames"]))
    reasons = pd.read_parquet(report["outputs"]["corrupt_reasons"].removeprefix("file://")).set_index("key")
    demo = scenario["demo"]
    for key, prefix in demo.broken.items():
        assert reasons.at[key, "reason"].startswith(prefix), (key, reasons.at[key, "reason"])
    for key, index in demo.damaged.items():
        bad = f"{key.removesuffix('.mp4')}-{index:06d}-mp4.png"
        assert reasons.at[bad, "reason"].startswith("undecodable"), bad
        good_before = f"{key.removesuffix('.mp4')}-{index - 2:06d}-mp4.png"
        assert good_before not in corrupt
    for key, frames in demo.truncated.items():
        last = f"{key.removesuffix('.mp4')}-{frames - 1:06d}-mp4.png"
        assert reasons.at[last, "reason"].startswith("missing: the header announces 40 frames")
        assert f"{key.removesuffix('.mp4')}-000000-mp4.png" not in corrupt, (
            "a truncated video keeps its first frames"
        )


def test_sequences_are_selected_whole_and_reported(scenario):
    report = _report(scenario["root"], scenario["first"].run_id)
    selected = _lines(report["outputs"]["selected_filenames"])
    sequences = report["sequence_information"]
    assert len(sequences) == N_SAMPLES // SEQUENCE
    assert sorted(name for s in sequences for name in s["frame_names"]) == sorted(selected)
    for sequence in sequences:
        indices = sequence["frame_indices"]
        assert indices == list(range(indices[0], indices[0] + SEQUENCE))
        assert indices[0] % SEQUENCE == 0
        assert [parse_frame_key(n) for n in sequence["frame_names"]] == [
            (sequence["video_name"], i) for i in indices
        ]
        assert sequence["frame_timestamps_sec"] == sorted(sequence["frame_timestamps_sec"])
    embeddings = pd.read_csv(report["outputs"]["embeddings_csv"].removeprefix("file://"))
    assert sorted(embeddings["filenames"]) == sorted(selected)


def test_dumped_frames_equal_the_decoded_frames(scenario):
    report = _report(scenario["root"], scenario["first"].run_id)
    selected = _lines(report["outputs"]["selected_filenames"])
    decoded: dict[str, list[np.ndarray | None]] = {}
    for key in selected:
        video, index = parse_frame_key(key)
        if video not in decoded:
            decoded[video] = _decoded_frames(scenario["videos"] / video)
        dumped = np.asarray(Image.open(scenario["root"] / "dump" / key))
        np.testing.assert_array_equal(dumped, decoded[video][index])
    assert report["stages"]["upload"]["bytesRead"] > 0


def test_datapool_holds_videos_and_dataset_holds_frames(scenario):
    seen = scenario["seen_after_first"]
    listed = {p.relative_to(scenario["videos"]).as_posix() for p in scenario["videos"].rglob("*.*")} - {
        "new/harbour.mp4"
    }
    assert set(seen) == listed
    samples = scenario["samples_after_first"]
    assert len(samples) == N_SAMPLES
    assert {parse_frame_key(k)[0] for k in samples["key"]} <= listed
    assert samples["metadata"].map(lambda m: {"video_key", "frame_index", "luminance"} <= set(m)).all()


def test_rerun_processes_only_new_and_changed_videos(scenario):
    assert scenario["second"].state == "success"
    report = _report(scenario["root"], scenario["second"].run_id)
    sizes = report["datasetSizes"]
    assert sizes["nInput"] == 2
    assert sizes["nSkippedSeen"] == sizes["nListed"] - 2
    assert sizes["nDatasetBefore"] == N_SAMPLES
    selected = _lines(report["outputs"]["selected_filenames"])
    assert {parse_frame_key(k)[0] for k in selected} <= {"new/harbour.mp4", "cams/street_02.mp4"}
    assert len(scenario["samples_after_second"]) == N_SAMPLES + sizes["nSelected"]
    assert report["stages"]["corruptness"]["bytesRead"] == report["traffic"]["datasourceBytes"]


@pytest.fixture(scope="module")
def s3_scenario(tmp_path_factory, airflow_db, s3) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("videos-s3")
    folder = root / "videos"
    demo = build_demo_videos(folder, width=160, height=120, noise=12.0)  # realistic bitrates for byte ratios
    bucket = s3.new_bucket("videos")
    uploaded = s3.upload_folder(folder, bucket, "raw/")
    s3.upload_folder(folder, bucket, "elsewhere/", keys=["cams/street_01.mp4"])  # outside the prefix
    conf = {
        "datasource": {"uri": f"s3://{bucket}/raw"},
        "dataset": "vids",
        "input_type": "videos",
        "stopping_condition": {"n_samples": 6},
        "artifacts_root": (root / "artifacts").as_uri(),
        "store_url": f"sqlite:///{root / 'store.db'}",
        "dump": {"output": (root / "dump").as_uri()},
        "embedding": {"image_size": 32},
    }
    s3.proxy.reset()
    run = load_dag("lightly_curation").test(run_conf=conf)
    return {
        "root": root,
        "demo": demo,
        "run": run,
        "uploaded": uploaded,
        "exchanges": s3.proxy.exchanges(bucket),
    }


def test_s3_videos_are_read_with_ranged_gets_and_counted_exactly(s3_scenario):
    assert s3_scenario["run"].state == "success"
    report = _report(s3_scenario["root"], s3_scenario["run"].run_id)
    assert report["traffic"]["datasourceBytes"] == s3_scenario["uploaded"]
    assert report["videos"]["nCorrupt"] == len(s3_scenario["demo"].broken)
    gets = [e for e in s3_scenario["exchanges"] if e.is_object_get]
    assert gets and all(e.byte_range for e in gets), "every object read is a ranged GET"
    # the pipeline's own byte counts are what crossed the network
    assert sum(e.response_body_bytes for e in gets) == report["traffic"]["bytesRead"]
    assert report["stages"]["frame_counting"]["bytesRead"] < report["traffic"]["datasourceBytes"]
    assert len(list((s3_scenario["root"] / "dump").rglob("*.png"))) == 6
    assert not [e for e in s3_scenario["exchanges"] if e.key.startswith("elsewhere/")], "only the prefix is read"


def test_s3_run_meets_the_issues_done_when(s3_scenario):
    """Exact frame counts, every broken video/frame with a reason, n_samples frames, <= 1.2x bytes in total
    (without the dump) and <= 5% of the MP4/MOV bytes to count their frames."""
    report = _report(s3_scenario["root"], s3_scenario["run"].run_id)
    demo = s3_scenario["demo"]
    videos = pd.read_parquet(report["videos"]["table"].removeprefix("file://")).set_index("key")
    for key, frames in {**demo.good, **dict.fromkeys(demo.damaged, 40)}.items():
        assert videos.at[key, "frames_counted"] == videos.at[key, "stream_frames"] == frames, key
    assert set(videos.loc[videos["count_method"] == "decoding pass"].index) == {"drone/field.mkv", "drone/lake.webm"}
    for key, frames in demo.truncated.items():
        assert videos.at[key, "frames_counted"] == frames > videos.at[key, "stream_frames"]
        assert "frame count mismatch" in videos.at[key, "reason"]
    for key, prefix in demo.broken.items():
        assert videos.at[key, "verdict"] == "corrupt" and videos.at[key, "reason"].startswith(prefix), key
    not_ok = videos[videos["verdict"] != "ok"]
    assert set(not_ok.index) == {*demo.broken, *demo.damaged, *demo.truncated}
    assert not_ok["reason"].notna().all()
    reasons = pd.read_parquet(report["outputs"]["corrupt_reasons"].removeprefix("file://")).set_index("key")
    for key, index in demo.damaged.items():
        assert reasons.at[f"{key.removesuffix('.mp4')}-{index:06d}-mp4.png", "reason"].startswith("undecodable")
    assert reasons["reason"].notna().all()
    assert report["datasetSizes"]["nSelected"] == 6
    total = report["traffic"]["datasourceBytes"]
    without_dump = sum(s["bytesRead"] for name, s in report["stages"].items() if name != "upload")
    assert without_dump <= 1.2 * total, without_dump / total
    mp4 = videos[videos.index.str.endswith((".mp4", ".mov"))]
    assert mp4["header_bytes"].sum() <= 0.05 * mp4["size"].sum(), mp4["header_bytes"].sum() / mp4["size"].sum()
    print(
        f"done-when figures: whole run {report['traffic']['bytesRead'] / total:.4f}x (without dump "
        f"{without_dump / total:.4f}x), MP4/MOV frame counting {mp4['header_bytes'].sum() / mp4['size'].sum():.4%}"
    )
