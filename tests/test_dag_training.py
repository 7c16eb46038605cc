"""The whole ``lightly_curation`` DAG with ``enable_training`` on an S3 datasource: one ``dag.test()`` run.

The bucket (moto server behind the counting proxy) holds the demo folder's real photos, a duplicate and broken
files. Training runs 10 epochs on the decoded cache (small crops, so it stays fast), the embedding uses the
trained backbone, and the proxy shows that the whole run fetched each datasource object once: 10 epochs add
no datasource bytes (the issue's bound: at most 1.2x the dataset's bytes).
"""

from __future__ import annotations

import collections
import json
from typing import Any

import pytest

from lightly_tasks.artifacts import safe_run_id
from lightly_tasks.demo_data import build_demo_folder
from tests.airflow_dags import load_dag
from tests.s3_server import S3Emulator

pytestmark = pytest.mark.dag

EPOCHS = 10


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, airflow_db, s3: S3Emulator) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("training")
    images = root / "images"
    demo = build_demo_folder(images, n_images=24, seed=5)
    src = s3.new_bucket("train-src")
    dataset_bytes = s3.upload_folder(images, src, "raw/")
    conf = {
        "datasource": {"uri": f"s3://{src}/raw"},
        "dataset": "trained",
        "stopping_condition": {"n_samples": 6},
        "artifacts_root": (root / "artifacts").as_uri(),
        "store_url": f"sqlite:///{root / 'store.db'}",
        "embedding": {"image_size": 32},
        "enable_training": True,
        "training": {"epochs": EPOCHS, "batch_size": 8, "image_size": 16},
        "num_shards": 2,
    }
    s3.proxy.reset()
    dag_run = load_dag("lightly_curation").test(run_conf=conf)
    exchanges = s3.proxy.exchanges(src)
    run_dir = root / "artifacts" / "trained" / "runs" / safe_run_id(dag_run.run_id)
    states = {ti.task_id: ti.state for ti in dag_run.get_task_instances()}
    return {
        "run": dag_run,
        "states": states,
        "run_dir": run_dir,
        "demo": demo,
        "images": images,
        "exchanges": exchanges,
        "dataset_bytes": dataset_bytes,
    }


def _report(trained_run: dict[str, Any]) -> dict[str, Any]:
    return json.loads((trained_run["run_dir"] / "report.json").read_text())


def test_training_task_ran_and_embedding_used_its_backbone(trained_run) -> None:
    assert trained_run["run"].state == "success"
    assert trained_run["states"]["training"] == "success"
    report = _report(trained_run)
    training = report["training"]
    assert training["method"] == "simclr" and training["epochs"] == EPOCHS
    losses = training["lossPerEpoch"]
    assert len(losses) == EPOCHS and all(loss > 0 for loss in losses)
    assert len(set(losses)) > 1, "the loss is measured per epoch, not copied"
    backbone = trained_run["run_dir"] / "training" / "backbone.pt"
    assert backbone.is_file() and (trained_run["run_dir"] / "training" / "checkpoint-last.pt").is_file()
    assert training["backbone"] == backbone.as_uri()
    assert report["stages"]["embedding"]["checkpoint"] == backbone.as_uri()
    n_ok = report["datasetSizes"]["nInput"] - report["datasetSizes"]["nCorrupt"]
    assert report["stages"]["training"]["bytesRead"] == 0 and n_ok > 0


def test_ten_epochs_read_the_bucket_once(trained_run) -> None:
    """What crossed the wire to the datasource bucket (the proxy's count, not the pipeline's) is one read of
    each object, however many epochs trained."""
    report = _report(trained_run)
    exchanges = trained_run["exchanges"]
    on_wire = sum(e.response_bytes for e in exchanges)  # every response of the datasource bucket, framing incl.
    object_gets = collections.Counter(e.key for e in exchanges if e.is_object_get)
    non_empty = [k for k in trained_run["demo"].all_keys() if (trained_run["images"] / k).stat().st_size > 0]
    assert set(object_gets) == {f"raw/{key}" for key in non_empty}, "empty objects need no GET"
    assert set(object_gets.values()) == {1}, "each object fetched once"
    assert report["traffic"]["datasourceBytes"] == trained_run["dataset_bytes"]
    assert on_wire <= 1.2 * trained_run["dataset_bytes"], (on_wire, trained_run["dataset_bytes"])
