"""A curation run whose dataset another run holds waits at ``list``, rescheduled, and goes on once it is free.

Real ``dag.test()`` runs of ``lightly_curation``: the other run is a lease taken in the store (as a backfill run
or the bucket watch's claim takes it), released from a thread while the run waits; and a lease held past the
wait limit, which fails the run with the holder's name. Poll and wait limits are shortened through their
environment variables.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import pytest
from lightly_airflow.dataset_lease import POLL_ENV, WAIT_ENV

from lightly_tasks.demo_data import add_images
from lightly_tasks.store import DatasetStore
from tests.airflow_dags import load_dag, run_with_logs

pytestmark = pytest.mark.dag


def _conf(root: Path) -> dict[str, Any]:
    images = root / "images"
    add_images(images, n_images=6, seed=2)
    return {
        "datasource": {"uri": images.as_uri()},
        "dataset": "busy",
        "stopping_condition": {"n_samples": 2},
        "artifacts_root": (root / "artifacts").as_uri(),
        "store_url": f"sqlite:///{root / 'store.db'}",
        "embedding": {"image_size": 32},
    }


class _WaitCounter(logging.Handler):
    """Counts the "waiting for it" records of the lease wait; ``twice`` is set at the second."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.count = 0
        self.twice = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "waiting for it" in record.getMessage():
            self.count += 1
            if self.count >= 2:
                self.twice.set()


def _task_states(dag_run: Any) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}


def test_a_run_waits_for_the_lease_then_curates(tmp_path: Path, airflow_db, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(POLL_ENV, "1")
    conf = _conf(tmp_path)
    store = DatasetStore(conf["store_url"])
    store.acquire_lease("busy", "backfill__other-window", ttl_seconds=600)
    waits = _WaitCounter()
    logging.getLogger("lightly_airflow.dataset_lease").addHandler(waits)

    def release_after_two_waits() -> None:
        waits.twice.wait(timeout=120)
        store.release_lease("busy", "backfill__other-window")

    releaser = threading.Thread(target=release_after_two_waits)
    releaser.start()
    logs: dict[str, str] = {}
    try:
        dag_run = run_with_logs(load_dag("lightly_curation"), conf, logs, "run")
    finally:
        waits.twice.set()
        releaser.join()
        logging.getLogger("lightly_airflow.dataset_lease").removeHandler(waits)
        store.close()
    assert waits.count >= 2, "the list task was rescheduled, not failed, while the lease was held"
    assert dag_run.state == "success", _task_states(dag_run)
    assert "is being curated by run 'backfill__other-window'" in logs["run"]
    assert "waiting for it: trying again in 1 s" in logs["run"]
    store = DatasetStore(conf["store_url"])
    try:
        assert store.run("busy", dag_run.run_id) is not None, "the run committed after the lease was freed"
        assert store.lease("busy") is None
    finally:
        store.close()


def test_a_run_gives_up_after_the_wait_limit(tmp_path: Path, airflow_db, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(POLL_ENV, "1")
    monkeypatch.setenv(WAIT_ENV, "3")
    conf = _conf(tmp_path)
    store = DatasetStore(conf["store_url"])
    store.acquire_lease("busy", "manual__stuck", ttl_seconds=600)
    logs: dict[str, str] = {}
    try:
        dag_run = run_with_logs(load_dag("lightly_curation"), conf, logs, "run")
        assert dag_run.state == "failed"
        assert _task_states(dag_run)["list"] == "failed"
        [listing] = [ti for ti in dag_run.get_task_instances() if ti.task_id == "list"]
        assert listing.try_number == 1, "giving up is final, not retried"
        assert "gave up after waiting" in logs["run"] and "'manual__stuck'" in logs["run"]
        assert store.lease("busy").holder == "manual__stuck", "the holder's lease is left alone"
    finally:
        store.close()
