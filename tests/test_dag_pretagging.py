"""The whole ``lightly_curation`` DAG with ``pretagging``: one ``dag.test()`` run on a small folder of real PNGs.

The model is a TorchScript detector that the test builds (:mod:`tests.tiny_models`): it boxes the red rectangle
drawn into each image, so the predictions can be checked against the truth in original-image pixels. The run
writes Lightly's predictions format for every decoded sample under the run, copies the selected samples'
predictions next to the dump, reports the class distribution, and reads no extra datasource bytes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lightly_tasks.artifacts import safe_run_id
from lightly_tasks.predictions import load_predictions
from lightly_tasks.storage import location_from_uri
from tests.airflow_dags import load_dag
from tests.tiny_models import RedBoxDetector, detector_schema, red_box_image, torchscript_bytes

pytestmark = pytest.mark.dag

N_SAMPLES = 4
TASK = "red_boxes"
# key -> ((width, height), red box x1, y1, x2, y2)
IMAGES = {
    f"{'nested/' if i % 3 == 0 else ''}img_{i}.png": ((96 + 16 * i, 64 + 8 * (i % 4)), (8 + i, 10, 40 + 4 * i, 50))
    for i in range(8)
}


@pytest.fixture(scope="module")
def pretagged_run(tmp_path_factory, airflow_db) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("pretagging")
    images = root / "images"
    (images / "nested").mkdir(parents=True)
    for i, (key, (size, box)) in enumerate(IMAGES.items()):
        red_box_image(images / key, size, box, seed=i)
    (images / "broken.png").write_bytes((images / "img_1.png").read_bytes()[:60])
    model = root / "models" / "red_boxes.torchscript"
    model.parent.mkdir()
    model.write_bytes(torchscript_bytes(RedBoxDetector(), detector_schema()))
    conf = {
        "datasource": {"uri": images.as_uri()},
        "dataset": "tagged",
        "stopping_condition": {"n_samples": N_SAMPLES},
        "artifacts_root": (root / "artifacts").as_uri(),
        "store_url": f"sqlite:///{root / 'store.db'}",
        "dump": {"output": (root / "selected").as_uri()},
        "embedding": {"image_size": 64},
        "num_shards": 2,
        "pretagging": True,
        "pretagging_config": {"model": model.as_uri(), "task_name": TASK, "batch_size": 3},
    }
    dag_run = load_dag("lightly_curation").test(run_conf=conf)
    run_dir = root / "artifacts" / "tagged" / "runs" / safe_run_id(dag_run.run_id)
    return {
        "run": dag_run,
        "states": [(ti.task_id, ti.state) for ti in dag_run.get_task_instances()],
        "run_dir": run_dir,
        "dump": root / "selected",
        "report": json.loads((run_dir / "report.json").read_text()) if (run_dir / "report.json").exists() else {},
    }


def test_pretagging_ran_per_shard_and_selection_after_it(pretagged_run) -> None:
    assert pretagged_run["run"].state == "success"
    states = pretagged_run["states"]
    assert [s for t, s in states if t == "pretagging"] == ["success", "success"]
    assert all(s == "success" for t, s in states if t in ("selection", "upload"))


def test_every_decoded_sample_has_its_box_in_original_pixels(pretagged_run) -> None:
    schema, predictions = load_predictions(location_from_uri(pretagged_run["run_dir"].as_uri()), TASK)
    assert schema.task_type == "object-detection" and schema.names[1] == "red"
    assert set(predictions) == set(IMAGES)  # the broken file was never decoded, so it has none
    for key, ((width, height), (x1, y1, x2, y2)) in IMAGES.items():
        (pred,) = predictions[key]  # the 0.1-score noise box is under the default threshold 0.5
        assert pred["category_id"] == 1
        tolerance = 2.5 * min(width, height) / 64
        assert pred["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1], abs=tolerance), key


def test_selected_predictions_travel_with_the_dump(pretagged_run) -> None:
    report = pretagged_run["report"]
    selected_txt = Path(report["outputs"]["selected_filenames"].removeprefix("file://"))
    selected = {k for k in selected_txt.read_text().split("\n") if k}
    assert len(selected) == N_SAMPLES
    _, dumped = load_predictions(location_from_uri(pretagged_run["dump"].as_uri()), TASK)
    assert set(dumped) == selected
    assert all((pretagged_run["dump"] / key).is_file() for key in selected)


def test_report_has_the_class_distribution_and_no_extra_traffic(pretagged_run) -> None:
    report = pretagged_run["report"]
    section = report["pretagging"]
    assert section["task"] == TASK and section["nSamples"] == len(IMAGES)
    assert section["classDistribution"] == {
        "input": {"background": 0, "red": len(IMAGES), "noise": 0},
        "selected": {"background": 0, "red": N_SAMPLES, "noise": 0},
    }
    stages = report["stages"]
    assert stages["pretagging"]["bytesRead"] == 0 and stages["pretagging"]["tasks"] == 2
    assert report["traffic"]["bytesRead"] == stages["corruptness"]["bytesRead"] + stages["upload"]["bytesRead"]
    assert report["outputs"]["predictions"].endswith("/.lightly/predictions")
