"""The DAG folder parses cleanly; ``lightly_curation`` has its stages, mapped tasks and documented Params."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from lightly_tasks.config import parse_config

DAGS = Path(__file__).resolve().parent.parent / "dags"
TASKS = {
    "has_datasource",
    "list",
    "frame_counting",
    "corruptness",
    "training",
    "embedding",
    "pretagging",
    "selection",
    "metadata",
    "upload",
    "release_lease",
}
MAPPED = {"corruptness", "embedding", "pretagging"}


@pytest.fixture(scope="module")
def dagbag() -> Any:
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


@pytest.fixture(scope="module")
def dag(dagbag):
    return dagbag.dags["lightly_curation"]


def test_no_import_errors(dagbag) -> None:
    assert dagbag.import_errors == {}
    assert "lightly_curation" in dagbag.dag_ids


def test_parsing_dags_does_not_import_torch_or_faiss() -> None:
    """The dag-processor re-parses DAG files often; torch/torchvision/faiss cost it seconds each time."""
    code = (
        "import json, sys\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        f"bag = DagBag(dag_folder={str(DAGS)!r})\n"
        "heavy = sorted(m for m in ('torch', 'torchvision', 'faiss') if m in sys.modules)\n"
        "print(json.dumps({'errors': list(bag.import_errors), 'dags': bag.dag_ids, 'heavy': heavy}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(DAGS.parent / "plugins")}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr
    parsed = json.loads(result.stdout.strip().splitlines()[-1])
    assert parsed["errors"] == [] and "lightly_curation" in parsed["dags"]
    assert parsed["heavy"] == []


def test_curation_tasks_and_mapping(dag) -> None:
    assert {t.task_id for t in dag.tasks} == TASKS
    for task in dag.tasks:
        assert bool(getattr(task, "is_mapped", False)) == (task.task_id in MAPPED), task.task_id
    assert dag.get_task("upload").upstream_task_ids >= {
        "list",
        "corruptness",
        "embedding",
        "selection",
        "metadata",
    }
    assert "list" in dag.get_task("corruptness").upstream_task_ids
    check = dag.get_task("has_datasource")  # skips the whole run, trigger rules aside, when nothing is set
    assert check.downstream_task_ids == {"list"} and not check.upstream_task_ids
    assert type(check).__name__ == "_ShortCircuitDecoratedOperator"
    assert "corruptness" in dag.get_task("embedding").get_flat_relative_ids(upstream=True)
    assert dag.get_task("selection").get_flat_relative_ids(upstream=True) >= {
        "list",
        "corruptness",
        "embedding",
    }


def test_every_param_is_documented(dag) -> None:
    assert len(dag.params) >= 10
    for name in dag.params:
        param = dag.params.get_param(name)
        assert param.schema.get("title"), name
        assert param.description or param.schema.get("description"), name
        jsonschema.validate(param.value, param.schema)


def test_param_defaults_form_a_valid_conf(dag) -> None:
    conf = dag.params.dump()
    conf["datasource"] = {**conf["datasource"], "uri": "file:///data/images"}
    conf["dataset"] = "cats"
    config = parse_config(conf)
    assert config.datasource.uri == "file:///data/images"
    assert config.stopping_condition.n_samples == conf["stopping_condition"]["n_samples"]
    dag.params.validate()
