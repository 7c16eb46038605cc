"""The repository's DAGs parsed as the dag-processor parses them, for the tests that run them with dag.test()."""

from __future__ import annotations

import io
import logging
import sys
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


class _Tee(io.TextIOBase):
    """A text stream that keeps a copy of everything written through it."""

    def __init__(self, stream: Any) -> None:
        self.stream, self.copy = stream, io.StringIO()

    def write(self, text: str) -> int:
        self.copy.write(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()


def run_with_logs(dag: Any, conf: dict[str, Any], logs: dict[str, str], name: str) -> Any:
    """``dag.test(run_conf=conf)`` with its task logs kept in ``logs[name]``; returns the DAG run.

    Airflow prints task logs to stdout/stderr under ``dag.test()``; records of stdlib loggers (the pipeline's
    own) are copied in as well.
    """
    out, err = _Tee(sys.stdout), _Tee(sys.stderr)
    records = logging.StreamHandler(out.copy)
    logging.getLogger().addHandler(records)
    sys.stdout, sys.stderr = out, err
    try:
        return dag.test(run_conf=conf)
    finally:
        sys.stdout, sys.stderr = out.stream, err.stream
        logging.getLogger().removeHandler(records)
        logs[name] = out.copy.getvalue() + err.copy.getvalue()
