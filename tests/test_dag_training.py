"""The whole ``lightly_curation`` DAG with ``enable_training``: one ``dag.test()`` run on a small folder.

Training runs 2 epochs on the decoded cache (tiny images), the embedding uses the trained backbone, and the
run still reads the datasource about once: training adds no datasource bytes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lightly_tasks.artifacts import safe_run_id
from lightly_tasks.demo_data import build_demo_folder

pytestmark = pytest.mark.dag


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, airflow_db) -> dict[str, Any]:
    from airflow.dag_processing.dagbag import DagBag

    root = tmp_path_factory.mktemp("training")
    images = root / "images"
    demo = build_demo_folder(images, n_images=24, seed=5)
    conf = {
        "datasource": {"uri": images.as_uri()},
        "dataset": "trained",
        "stopping_condition": {"n_samples": 6},
        "artifacts_root": (root / "artifacts").as_uri(),
        "store_url": f"sqlite:///{root / 'store.db'}",
        "embedding": {"image_size": 32},
        "enable_training": True,
        "training": {"epochs": 2, "batch_size": 8},
        "num_shards": 2,
    }
    bag = DagBag(dag_folder=str(Path(__file__).resolve().parent.parent / "dags"))
    assert not bag.import_errors, bag.import_errors
    dag_run = bag.get_dag("lightly_curation").test(run_conf=conf)
    run_dir = root / "artifacts" / "trained" / "runs" / safe_run_id(dag_run.run_id)
    states = {ti.task_id: ti.state for ti in dag_run.get_task_instances()}
    return {"run": dag_run, "states": states, "run_dir": run_dir, "demo": demo}


def test_training_task_ran_and_embedding_used_its_backbone(trained_run) -> None:
    assert trained_run["run"].state == "success"
    assert trained_run["states"]["training"] == "success"
    report = json.loads((trained_run["run_dir"] / "report.json").read_text())
    training = report["training"]
    assert training["method"] == "simclr" and training["epochs"] == 2
    assert len(training["lossPerEpoch"]) == 2 and all(loss > 0 for loss in training["lossPerEpoch"])
    backbone = trained_run["run_dir"] / "training" / "backbone.pt"
    assert backbone.is_file() and (trained_run["run_dir"] / "training" / "checkpoint-last.pt").is_file()
    assert training["backbone"] == backbone.as_uri()
    assert report["stages"]["embedding"]["checkpoint"] == backbone.as_uri()


def test_training_reads_no_datasource_bytes(trained_run) -> None:
    report = json.loads((trained_run["run_dir"] / "report.json").read_text())
    traffic = report["traffic"]
    assert report["stages"]["training"]["bytesRead"] == 0
    assert report["stages"]["corruptness"]["bytesRead"] == traffic["datasourceBytes"]
    assert traffic["bytesRead"] <= 1.2 * traffic["datasourceBytes"]
