"""``lightly_curation`` as real Airflow processes see it: the REST API of an api-server, the backfill CLI.

One module-scoped temporary AIRFLOW_HOME (SQLite, DAGs serialised by ``airflow dags reserialize``) with an
``airflow api-server`` subprocess on a free port (~30-60 s to set up on 2 cores), shared by:

* the trigger form as the UI gets it (``GET /api/v2/dags/lightly_curation/details``): every param with a title,
  a description and its default;
* ``POST /api/v2/dags/lightly_curation/dagRuns``: a bad value is rejected with 4xx before a run exists, a good
  conf is accepted;
* ``airflow backfill create`` over three days: three backfill runs with daily data intervals.

Two ``slow`` tests start their own home with a scheduler (LocalExecutor) and more (several minutes each on 2
cores): an S3 put on the moto server reaching an asset-triggered run through SQS, the triggerer and the
scheduler; and a three-day backfill executed to success, whose tags partition the folder's objects.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from lightly_tasks.config import param_schemas
from tests.airflow_services import AirflowHome, airflow_home

pytestmark = pytest.mark.integration

DAG = "lightly_curation"
GOOD_CONF = {
    "datasource": {"uri": "s3://bucket/raw/{{ ds_nodash }}/", "window": "none"},
    "dataset": "ui-check",
    "stopping_condition": {"n_samples": 10},
}


@pytest.fixture(scope="module")
def airflow(tmp_path_factory) -> Iterator[AirflowHome]:
    home = airflow_home(tmp_path_factory.mktemp("airflow-services"))
    try:
        home.start_api_server()
        yield home
    finally:
        home.stop_all()


def _runs(airflow: AirflowHome) -> list[dict[str, Any]]:
    status, body = airflow.request("GET", f"/api/v2/dags/{DAG}/dagRuns?limit=100&order_by=logical_date")
    assert status == 200, body
    return body["dag_runs"]


def _walk(schema: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{name}")


def test_every_param_has_title_description_and_default_in_the_rest_api(airflow: AirflowHome) -> None:
    status, details = airflow.request("GET", f"/api/v2/dags/{DAG}/details")
    assert status == 200, details
    params = details["params"]
    expected = param_schemas()
    assert set(params) == set(expected)
    for name, param in params.items():
        # a top-level Param keeps its default as the value and its description beside the schema
        schema = param["schema"]
        assert param["value"] == expected[name]["default"], name
        assert param["description"] == expected[name]["description"] != "", name
        assert schema.get("title"), f"{name} has no title"
        for path, sub in list(_walk(schema, name))[1:]:
            assert sub.get("title"), f"{path} has no title"
            assert sub.get("description"), f"{path} has no description"
            assert "default" in sub, f"{path} has no default"
    assert params["datasource"]["schema"]["properties"]["window"]["enum"] == ["none", "data_interval"]
    assert details["is_paused"] is True
    assert "0 0 * * *" in (details.get("timetable_summary") or "") or details.get("timetable_summary") == "@daily"


@pytest.mark.parametrize(
    ("bad", "key"),
    [
        ({"stopping_condition": {"n_samples": 0}}, "n_samples"),
        ({"input_type": "audio"}, "input_type"),
        ({"datasource": {"uri": "s3://b/p", "window": "weekly"}}, "window"),
        ({"datasource": {"uri": "s3://b/p", "typo": 1}}, "typo"),
        ({"batch_size": "many"}, "batch_size"),
    ],
)
def test_a_bad_value_is_rejected_before_a_run_exists(airflow: AirflowHome, bad: dict, key: str) -> None:
    before = {r["dag_run_id"] for r in _runs(airflow)}
    trigger = {"logical_date": None, "conf": {**GOOD_CONF, **bad}}
    status, body = airflow.request("POST", f"/api/v2/dags/{DAG}/dagRuns", trigger)
    assert 400 <= status < 500, (status, body)
    assert key in str(body), body
    assert {r["dag_run_id"] for r in _runs(airflow)} == before


def test_a_good_conf_is_accepted(airflow: AirflowHome) -> None:
    status, run = airflow.request("POST", f"/api/v2/dags/{DAG}/dagRuns", {"logical_date": None, "conf": GOOD_CONF})
    assert status == 200, run
    assert run["conf"] == GOOD_CONF and run["state"] == "queued" and run["run_type"] == "manual"
    assert run["dag_run_id"] in {r["dag_run_id"] for r in _runs(airflow)}


def test_backfill_create_makes_one_run_per_day_with_its_data_interval(airflow: AirflowHome) -> None:
    conf = {**GOOD_CONF, "datasource": {"uri": "s3://bucket/history", "window": "data_interval"}}

    airflow.cli(
        "backfill", "create", "--dag-id", DAG, "--from-date", "2026-03-01", "--to-date", "2026-03-03",
        "--dag-run-conf", json.dumps(conf),
    )
    backfill_runs = [r for r in _runs(airflow) if r["run_type"] == "backfill"]
    intervals = sorted((r["data_interval_start"][:19], r["data_interval_end"][:19]) for r in backfill_runs)
    assert intervals == [
        ("2026-03-01T00:00:00", "2026-03-02T00:00:00"),
        ("2026-03-02T00:00:00", "2026-03-03T00:00:00"),
        ("2026-03-03T00:00:00", "2026-03-04T00:00:00"),
    ]
    assert all(r["conf"] == conf for r in backfill_runs)
    assert len({r["dag_run_id"] for r in backfill_runs}) == 3


# ---- slow: a scheduler (and triggerer) in their own temporary AIRFLOW_HOME ----


def _task_states(home: AirflowHome, run_id: str) -> dict[str, str]:
    """State per task of one run, for the tasks that have one (a short-circuited run: the first two)."""
    import sqlite3

    with sqlite3.connect(home.path / "airflow.db", timeout=30) as db:
        rows = db.execute(
            "SELECT task_id, state FROM task_instance WHERE dag_id = ? AND run_id = ? AND task_id IN (?, ?)",
            (DAG, run_id, "has_datasource", "list"),
        ).fetchall()
    return dict(rows)


def _task_tries(home: AirflowHome, run_id: str, task_id: str) -> int:
    """How often a task of a run was rescheduled (Airflow's task_reschedule rows)."""
    import sqlite3

    with sqlite3.connect(home.path / "airflow.db", timeout=30) as db:
        (count,) = db.execute(
            "SELECT COUNT(*) FROM task_reschedule tr JOIN task_instance ti ON tr.ti_id = ti.id "
            "WHERE ti.dag_id = ? AND ti.run_id = ? AND ti.task_id = ?",
            (DAG, run_id, task_id),
        ).fetchone()
    return int(count)


def _dag_runs(home: AirflowHome) -> list[dict[str, Any]]:
    """The DAG's runs straight from the home's SQLite metadata DB (no api-server needed)."""
    import sqlite3

    with sqlite3.connect(home.path / "airflow.db", timeout=30) as db:
        db.row_factory = sqlite3.Row
        rows = db.execute(
            "SELECT id, run_id, run_type, state, data_interval_start, data_interval_end FROM dag_run WHERE dag_id = ?",
            (DAG,),
        ).fetchall()
    return [dict(r) for r in rows]


def _wait(predicate, timeout: float, home: AirflowHome, what: str) -> Any:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        for name, proc in home.processes.items():
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited with {proc.returncode}:\n{home.log(name)[-4000:]}")
        time.sleep(2)
    logs = "\n".join(f"--- {n}\n{home.log(n)[-3000:]}" for n in home.processes)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; runs: {_dag_runs(home)}\n{logs}")


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_s3_event_starts_a_curation_run(tmp_path, s3) -> None:
    """put object -> S3 notification -> SQS -> triggerer (asset watcher) -> asset event -> scheduler -> run.

    The run is only checked to be created as an asset-triggered run whose asset event carries the notification
    (running its tasks is what the DAG tests and the backfill test below do).
    """
    import sqlite3
    from urllib.parse import unquote_plus

    from tests.test_s3_events import s3_event_queue

    bucket = s3.new_bucket("e2e")
    queue_url = s3_event_queue(s3, bucket, "raw/")
    conf = {"datasource": {"uri": f"s3://{bucket}/raw"}, "dataset": "events", "stopping_condition": {"n_samples": 5}}
    home = airflow_home(
        tmp_path / "home",
        LIGHTLY_S3_EVENTS_QUEUE=queue_url,
        LIGHTLY_CURATION_CONF=json.dumps(conf),
        LIGHTLY_S3_EVENTS_POLL_SECONDS="1",
        AIRFLOW_CONN_AWS_DEFAULT=s3.connection_json(),
    )
    try:
        home.cli("dags", "unpause", DAG)
        home.start("dag-processor")
        home.start("triggerer")
        home.start("scheduler")

        def watcher_registered() -> bool:
            with sqlite3.connect(home.path / "airflow.db", timeout=30) as db:
                return bool(db.execute("SELECT count(*) FROM asset_watcher").fetchone()[0])

        _wait(watcher_registered, 240, home, "the asset watcher to be registered")
        s3.client().put_object(Bucket=bucket, Key="raw/cam1/new.jpg", Body=b"jpeg bytes")
        run = _wait(
            lambda: next((r for r in _dag_runs(home) if r["run_type"] == "asset_triggered"), None),
            240, home, "an asset-triggered run",
        )
        with sqlite3.connect(home.path / "airflow.db", timeout=30) as db:
            extras = [json.loads(e) for (e,) in db.execute("SELECT extra FROM asset_event").fetchall()]
        keys = {
            unquote_plus(record["s3"]["object"]["key"])
            for extra in extras
            for message in extra["payload"]["message_batch"]
            for record in json.loads(message["Body"])["Records"]
        }
        assert keys == {"raw/cam1/new.jpg"}
        assert run["run_id"].startswith("asset_triggered__")
    finally:
        home.stop_all()


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_scheduler_runs_a_backfill_window_by_window(tmp_path) -> None:
    """``airflow backfill create`` over three days, executed by a real scheduler (LocalExecutor) and api-server.

    The runs start at once and take turns at the dataset lease (rescheduled while waiting); the daily run that
    unpausing starts has no LIGHTLY_CURATION_CONF and is skipped, not failed.
    """
    import os
    from datetime import UTC, datetime, timedelta

    from lightly_tasks.artifacts import safe_run_id
    from lightly_tasks.demo_data import add_images
    from lightly_tasks.store import DatasetStore

    images = tmp_path / "images"
    days = [datetime(2026, 3, d, tzinfo=UTC) for d in (1, 2, 3)]
    by_day = {}
    for i, day in enumerate(days):
        keys = add_images(images, n_images=2, seed=i, subdir=f"d{i}")
        for key in keys:
            os.utime(images / key, ((day + timedelta(hours=3)).timestamp(),) * 2)
        by_day[day.date().isoformat()] = set(keys)
    store_url = f"sqlite:///{tmp_path / 'store.db'}"
    conf = {
        "datasource": {"uri": images.as_uri(), "window": "data_interval"},
        "dataset": "history",
        "stopping_condition": {"n_samples": 10},
        "artifacts_root": (tmp_path / "artifacts").as_uri(),
        "store_url": store_url,
        "embedding": {"image_size": 32},
        "num_shards": 1,
    }
    home = airflow_home(tmp_path / "home", LIGHTLY_LEASE_POLL_SECONDS="5")
    try:
        home.cli("dags", "unpause", DAG)
        # no --max-active-runs: the three runs start together and wait for each other at the dataset lease
        home.cli(
            "backfill", "create", "--dag-id", DAG, "--from-date", "2026-03-01", "--to-date", "2026-03-03",
            "--dag-run-conf", json.dumps(conf),
        )
        home.start_api_server()
        home.start("scheduler")

        def finished() -> list[dict[str, Any]] | None:
            runs = [r for r in _dag_runs(home) if r["run_type"] in ("backfill", "scheduled")]
            done = [r for r in runs if r["state"] in ("success", "failed")]
            if len(done) == 4 and {r["run_type"] for r in done} == {"backfill", "scheduled"}:
                return runs
            return None

        every = _wait(finished, 1200, home, "three finished backfill runs and the daily run")
        [scheduled] = [r for r in every if r["run_type"] == "scheduled"]
        assert scheduled["state"] == "success", "unpausing without LIGHTLY_CURATION_CONF: the daily run skips"
        assert _task_states(home, scheduled["run_id"]) == {"has_datasource": "success", "list": "skipped"}
        runs = sorted((r for r in every if r["run_type"] == "backfill"), key=lambda r: r["data_interval_start"])
        assert [r["state"] for r in runs] == ["success"] * 3, runs
        waits = [_task_tries(home, r["run_id"], "list") for r in runs]
        assert any(tries > 0 for tries in waits), f"no run waited for the lease: {waits}"
        store = DatasetStore(store_url)
        try:
            samples = store.samples("history")
        finally:
            store.close()
        for run in runs:
            day = run["data_interval_start"][:10]
            tag = f"selected_{safe_run_id(run['run_id'])}"
            tagged = {k for k, tags in zip(samples["key"], samples["tags"], strict=True) if tag in tags}
            assert tagged == by_day[day], (day, tagged)
        assert len(samples) == 6 and samples["key"].is_unique
    finally:
        home.stop_all()
