"""The whole ``lightly_curation`` DAG, run in-process with ``dag.test()`` on real images and broken files.

One module-scoped scenario runs the DAG several times against the same dataset: a first run, a failed run
(upload made to fail) that must leave the datapool untouched, a datapool rerun after new files land, and a
``process_all`` run. Each run is ~10-20 s, so the scenario is shared by the assertions below.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from lightly_tasks.demo_data import add_images, build_demo_folder
from lightly_tasks.store import DatasetStore
from tests.airflow_dags import load_dag

pytestmark = pytest.mark.dag

N_SAMPLES = 12


def _run(dag, conf: dict[str, Any]):
    dag_run = dag.test(run_conf=conf)
    return dag_run


def _report(root: Path, run_id: str) -> dict[str, Any]:
    from lightly_tasks.artifacts import safe_run_id

    return json.loads((root / "artifacts" / "ds" / "runs" / safe_run_id(run_id) / "report.json").read_text())


@pytest.fixture(scope="module")
def scenario(tmp_path_factory, airflow_db) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("curation")
    images = root / "images"
    demo = build_demo_folder(images, n_images=36, seed=3)
    conf = {
        "datasource": {"uri": images.as_uri()},
        "dataset": "ds",
        "stopping_condition": {"n_samples": N_SAMPLES},
        "artifacts_root": (root / "artifacts").as_uri(),
        "store_url": f"sqlite:///{root / 'store.db'}",
        "dump": {"output": (root / "selected").as_uri()},
        "embedding": {"image_size": 64},
        "num_shards": 2,
    }
    dag = load_dag("lightly_curation")
    first = _run(dag, conf)
    store = DatasetStore(conf["store_url"])
    seen_after_first = store.seen_objects("ds", images.as_uri())
    samples_after_first = store.samples("ds")

    added = add_images(images, n_images=6, seed=11)
    # Failure injection: the dump target is a file, so upload fails before the store transaction.
    blocker = root / "blocker"
    blocker.write_text("not a folder")
    failed = _run(dag, {**conf, "dump": {"output": blocker.as_uri() + "/sub"}})
    seen_after_failed = store.seen_objects("ds", images.as_uri())
    samples_after_failed = store.samples("ds")

    second = _run(dag, conf)
    samples_after_second = store.samples("ds")
    third = _run(dag, {**conf, "datasource": {"uri": images.as_uri(), "process_all": True},
                       "stopping_condition": {"n_samples": 3}, "dump": {}})
    store.close()
    return {
        "root": root,
        "images": images,
        "demo": demo,
        "added": added,
        "first": first,
        "failed": failed,
        "second": second,
        "third": third,
        "seen_after_first": seen_after_first,
        "seen_after_failed": seen_after_failed,
        "samples_after_first": samples_after_first,
        "samples_after_failed": samples_after_failed,
        "samples_after_second": samples_after_second,
        "store_url": conf["store_url"],
    }


def test_first_run_succeeds_and_selects_n_samples(scenario):
    assert scenario["first"].state == "success"
    report = _report(scenario["root"], scenario["first"].run_id)
    sizes = report["datasetSizes"]
    demo = scenario["demo"]
    n_objects = len(demo.real) + len(demo.duplicates) + len(demo.broken) + len(demo.convertible)
    assert sizes["nInput"] == n_objects
    assert sizes["nSelected"] == N_SAMPLES
    assert sizes["nCorrupt"] == len(demo.broken)
    assert sizes["nDuplicate"] == len(demo.duplicates)


def test_every_broken_file_is_listed_with_its_reason(scenario):
    report = _report(scenario["root"], scenario["first"].run_id)
    corrupt_txt = Path(report["outputs"]["corrupt_filenames"].removeprefix("file://"))
    assert set(corrupt_txt.read_text().split("\n")) - {""} == set(scenario["demo"].broken)
    reasons = pd.read_parquet(report["outputs"]["corrupt_reasons"].removeprefix("file://"))
    for key, expected in scenario["demo"].broken.items():
        reason = reasons.loc[reasons["key"] == key, "reason"].item()
        assert reason.startswith(expected), (key, reason)


def test_selected_files_are_dumped_and_distinct(scenario):
    report = _report(scenario["root"], scenario["first"].run_id)
    selected_txt = Path(report["outputs"]["selected_filenames"].removeprefix("file://"))
    selected = [k for k in selected_txt.read_text().split("\n") if k]
    assert len(selected) == N_SAMPLES
    broken = set(scenario["demo"].broken)
    assert not broken & set(selected)
    digests = set()
    for key in selected:
        dumped = (scenario["root"] / "selected" / key).read_bytes()
        assert dumped == (scenario["images"] / key).read_bytes()
        digests.add(hashlib.sha256(dumped).hexdigest())
    assert len(digests) == N_SAMPLES, "two selected files are byte-identical"


def test_report_traffic_and_exports(scenario):
    report = _report(scenario["root"], scenario["first"].run_id)
    traffic = report["traffic"]
    added = set(scenario["added"])
    listed_bytes = sum(
        p.stat().st_size
        for p in scenario["images"].rglob("*")
        if p.is_file() and p.relative_to(scenario["images"]).as_posix() not in added
    )
    assert traffic["datasourceBytes"] == listed_bytes
    # decoding reads every object once; the dump re-reads only the selected ones
    selected_bytes = report["stages"]["upload"]["bytesRead"]
    assert report["stages"]["corruptness"]["bytesRead"] == traffic["datasourceBytes"]
    assert traffic["bytesRead"] == traffic["datasourceBytes"] + selected_bytes
    assert report["stages"]["embedding"]["bytesRead"] == 0
    assert report["config"]["datasource"]["uri"] == scenario["images"].as_uri()
    csv_path = Path(report["outputs"]["embeddings_csv"].removeprefix("file://"))
    frame = pd.read_csv(csv_path)
    assert list(frame.columns[:2]) == ["filenames", "embedding_0"] and frame.columns[-1] == "labels"
    assert len(frame) == N_SAMPLES


def test_failed_run_leaves_store_and_datapool_untouched(scenario):
    assert scenario["failed"].state == "failed"
    assert scenario["seen_after_failed"] == scenario["seen_after_first"]
    pd.testing.assert_frame_equal(scenario["samples_after_failed"], scenario["samples_after_first"])


def test_rerun_processes_only_added_files(scenario):
    assert scenario["second"].state == "success"
    report = _report(scenario["root"], scenario["second"].run_id)
    sizes = report["datasetSizes"]
    assert sizes["nInput"] == len(scenario["added"])
    assert sizes["nSkippedSeen"] == sizes["nListed"] - len(scenario["added"])
    selected_txt = Path(report["outputs"]["selected_filenames"].removeprefix("file://"))
    selected = [k for k in selected_txt.read_text().split("\n") if k]
    assert set(selected) <= set(scenario["added"])
    assert sizes["nDatasetBefore"] == N_SAMPLES
    assert len(scenario["samples_after_second"]) == N_SAMPLES + sizes["nSelected"]


def test_process_all_reconsiders_everything_but_keeps_existing_samples(scenario):
    assert scenario["third"].state == "success"
    report = _report(scenario["root"], scenario["third"].run_id)
    sizes = report["datasetSizes"]
    assert sizes["nSkippedSeen"] == 0
    assert sizes["nInput"] == sizes["nListed"]
    assert sizes["nInDataset"] == len(scenario["samples_after_second"])
    store = DatasetStore(scenario["store_url"])
    try:
        samples = store.samples("ds")
    finally:
        store.close()
    assert len(samples) == len(scenario["samples_after_second"]) + sizes["nSelected"]
    assert samples["key"].is_unique
