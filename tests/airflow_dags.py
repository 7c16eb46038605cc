"""The repository's DAGs parsed as the dag-processor parses them, for the tests that run them with dag.test()."""

from __future__ import annotations

from pathlib import Path
from typing import Any

DAGS_FOLDER = Path(__file__).resolve().parent.parent / "dags"


def dag_bag() -> Any:
    """A fresh DagBag of dags/; fails the test on any import error (airflow is imported here, not at collection)."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS_FOLDER))
    assert not bag.import_errors, bag.import_errors
    return bag


def load_dag(dag_id: str) -> Any:
    """The DAG ``dag_id`` from a fresh :func:`dag_bag`."""
    return dag_bag().get_dag(dag_id)
