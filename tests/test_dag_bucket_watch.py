"""End to end on the S3 emulator: new objects land -> ``lightly_bucket_watch`` -> one ``lightly_curation`` run.

The bucket holds objects the dataset's datapool has already seen, and new ones; the watch DAG's deferrable
sensor defers to its trigger, which ``dag.test()`` runs in-process (uploads during the wait are tested on the
trigger itself, in test_bucket_watch_trigger.py). The watch must trigger
exactly one curation run, whose conf is the watch's; a second watch run while that curation is still pending
must not trigger another. ``dag.test()`` cannot execute the run that TriggerDagRunOperator created (it only
runs the DAG it is called on), so the test runs ``lightly_curation`` with ``dag.test()`` for that run's
logical date and conf: Airflow gives it the same run id, and it must process exactly the new objects.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import pandas as pd
import pytest

from lightly_tasks.artifacts import safe_run_id
from lightly_tasks.demo_data import add_images
from lightly_tasks.store import SELECTED_COLUMNS, DatasetStore, RunCommit
from lightly_tasks.watch_config import WATCH_CONFIG_ENV
from tests.airflow_dags import dag_bag
from tests.s3_server import S3Emulator

pytestmark = pytest.mark.dag


def _dags() -> tuple[Any, Any]:
    bag = dag_bag()
    return bag.get_dag("lightly_bucket_watch"), bag.get_dag("lightly_curation")


def _curation_runs() -> dict[str, Any]:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        runs = session.scalars(select(DagRun).where(DagRun.dag_id == "lightly_curation")).all()
        return {r.run_id: {"conf": r.conf, "logical_date": r.logical_date, "state": r.state} for r in runs}


def _states(dag_run: Any) -> dict[str, str]:
    return {ti.task_id: ti.state for ti in dag_run.get_task_instances()}


def _xcom(dag_run: Any, task_id: str) -> Any:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.scalars(
            XComModel.get_many(run_id=dag_run.run_id, dag_ids=dag_run.dag_id, task_ids=task_id, key="return_value")
        ).first()
        return None if row is None else XComModel.deserialize_value(row)


@pytest.fixture(scope="module")
def scenario(tmp_path_factory, airflow_db, s3: S3Emulator) -> dict[str, Any]:
    from lightly_airflow.context import location_for

    from lightly_tasks.storage import list_objects

    root = tmp_path_factory.mktemp("bucket-watch")
    bucket = s3.new_bucket("watch")
    folder = root / "images"
    old = add_images(folder, n_images=4, seed=21, subdir="old")
    new = add_images(folder, n_images=3, seed=22, subdir="new")
    s3.upload_folder(folder, bucket, "raw/", keys=old)
    conf = {
        "datasource": {"uri": f"s3://{bucket}/raw"},
        "dataset": "grown",
        "stopping_condition": {"n_samples": 2},
        "artifacts_root": (root / "artifacts").as_uri(),
        "store_url": f"sqlite:///{root / 'store.db'}",
        "embedding": {"image_size": 32},
    }
    # The datapool has seen the old objects (as if an earlier run had processed them).
    listed = list_objects(location_for(f"s3://{bucket}/raw", "aws_default"))
    store = DatasetStore(conf["store_url"])
    store.commit_run(
        RunCommit(
            dataset="grown",
            datasource=f"s3://{bucket}/raw",
            run_id="seed",
            tag="seed",
            conf={},
            selected=pd.DataFrame(columns=list(SELECTED_COLUMNS)),
            processed=listed[["key", "etag"]],
            counts={},
            bytes_read=0,
            datasource_bytes=0,
        )
    )
    watch = {"name": "grown", "quiet_seconds": 1.5, "poll_seconds": 0.25, "window_seconds": 60, "conf": conf}
    watch_file = root / "bucket_watch.json"
    watch_file.write_text(json.dumps({"watches": [watch]}))

    with pytest.MonkeyPatch.context() as env:
        env.setenv(WATCH_CONFIG_ENV, str(watch_file))
        watch_dag, curation_dag = _dags()
        before = set(_curation_runs())

        s3.upload_folder(folder, bucket, "raw/", keys=new)
        first = watch_dag.test()
        manifest = _xcom(first, "watch_grown")
        after_first = {k: v for k, v in _curation_runs().items() if k not in before}
        lease_after_first = store.lease("grown")

        # A second watch run while the triggered curation has not run yet: it must not trigger again.
        watch_file.write_text(json.dumps({"watches": [{**watch, "window_seconds": 2}]}))
        watch_dag, _ = _dags()
        second = watch_dag.test()
        after_second = {k: v for k, v in _curation_runs().items() if k not in before}

    [(run_id, triggered)] = after_first.items()
    logical_date = triggered["logical_date"]
    curated = curation_dag.test(logical_date=logical_date, run_after=logical_date, run_conf=triggered["conf"])
    result = {
        "root": root,
        "old": old,
        "new": new,
        "conf": conf,
        "bucket": bucket,
        "first": first,
        "first_states": _states(first),
        "manifest": manifest,
        "after_first": after_first,
        "lease_after_first": lease_after_first,
        "second": second,
        "second_states": _states(second),
        "after_second": after_second,
        "run_id": run_id,
        "curated": curated,
        "seen_after": store.seen_objects("grown", f"s3://{bucket}/raw"),
        "lease_after_curation": store.lease("grown"),
        "committed": store.run("grown", run_id),
    }
    store.close()
    return result


def test_watch_fires_once_with_exactly_the_new_objects(scenario) -> None:
    assert scenario["first"].state == "success"
    assert scenario["first_states"] == {"watch_grown": "success", "trigger_grown": "success"}
    manifest = scenario["manifest"]
    assert manifest["keys"] == sorted(scenario["new"])
    assert manifest["n_objects"] == len(scenario["new"]) and not manifest["keys_truncated"]


def test_exactly_one_curation_run_with_the_watch_conf(scenario) -> None:
    [(run_id, run)] = scenario["after_first"].items()
    assert run_id == scenario["manifest"]["run_id"]
    assert run["conf"] == scenario["conf"]
    assert run["logical_date"] == datetime.fromisoformat(scenario["manifest"]["logical_date"])
    lease = scenario["lease_after_first"]
    assert lease is not None and lease.holder == run_id  # claimed for the run until it starts


def test_second_watch_run_does_not_trigger_while_the_curation_is_pending(scenario) -> None:
    assert scenario["second_states"] == {"watch_grown": "skipped", "trigger_grown": "skipped"}
    assert scenario["after_second"] == scenario["after_first"]


def test_triggered_curation_processes_exactly_the_new_objects(scenario) -> None:
    curated = scenario["curated"]
    assert curated.run_id == scenario["run_id"]  # the very run the watch triggered and claimed
    assert curated.state == "success"
    report_path = scenario["root"] / "artifacts" / "grown" / "runs" / safe_run_id(curated.run_id) / "report.json"
    sizes = json.loads(report_path.read_text())["datasetSizes"]
    assert sizes["nInput"] == len(scenario["new"])
    assert sizes["nSkippedSeen"] == len(scenario["old"])
    objects = pd.read_parquet(
        scenario["root"] / "artifacts" / "grown" / "runs" / safe_run_id(curated.run_id) / "list" / "objects.parquet"
    )
    assert sorted(objects["key"]) == sorted(scenario["new"])
    assert set(scenario["seen_after"]) == set(scenario["old"]) | set(scenario["new"])
    assert scenario["committed"] is not None and scenario["committed"].counts["nInput"] == len(scenario["new"])
    assert scenario["lease_after_curation"] is None  # the commit released it
