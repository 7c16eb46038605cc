"""``BucketWatchTrigger`` and ``BucketWatchSensor`` on a real folder and on the S3 emulator.

The trigger's ``run()`` is driven by a plain asyncio loop, as the triggerer would drive it, while objects
are written or uploaded in another thread; the sensor is exercised through its deferral and resumption.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from airflow.sdk.exceptions import AirflowSkipException, TaskDeferred
from lightly_airflow.context import location_for
from lightly_airflow.sensors.bucket_watch import BucketWatchError, BucketWatchSensor
from lightly_airflow.triggers import bucket_watch as trigger_module
from lightly_airflow.triggers.bucket_watch import BucketWatchTrigger

from lightly_tasks.config import ConfigError
from lightly_tasks.demo_data import add_images
from lightly_tasks.storage import list_objects
from lightly_tasks.store import SELECTED_COLUMNS, DatasetStore, RunCommit
from tests.s3_server import S3Emulator

QUIET = 1.0
POLL = 0.1


def _seed_datapool(store_url: str, uri: str, conn_id: str | None = None) -> list[str]:
    """Record every object now under ``uri`` in the datapool of dataset 'ds', as a finished run would."""
    location = location_for(uri, conn_id)
    listed = list_objects(location)
    store = DatasetStore(store_url)
    try:
        store.commit_run(
            RunCommit(
                dataset="ds",
                datasource=location.uri.rstrip("/"),
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
    finally:
        store.close()
    return listed["key"].tolist()


def _trigger(conf: dict[str, Any], *, window: float = 30.0, **settings: Any) -> BucketWatchTrigger:
    deadline = (datetime.now(UTC) + timedelta(seconds=window)).isoformat()
    return BucketWatchTrigger(
        conf=conf, deadline=deadline, **{"quiet_seconds": QUIET, "poll_seconds": POLL, **settings}
    )


def _run(trigger: BucketWatchTrigger) -> tuple[list[dict[str, Any]], float, float]:
    """All events of ``trigger.run()``, when the last one came (monotonic), and the loop's longest stall."""

    async def main() -> tuple[list[dict[str, Any]], float, float]:
        stalls = [0.0]
        done = asyncio.Event()

        async def ticker() -> None:
            last = time.monotonic()
            while not done.is_set():
                await asyncio.sleep(0.02)
                now = time.monotonic()
                stalls[0] = max(stalls[0], now - last)
                last = now

        tick = asyncio.create_task(ticker())
        events = [event.payload async for event in trigger.run()]
        finished = time.monotonic()
        done.set()
        await tick
        return events, finished, stalls[0]

    return asyncio.run(main())


def _in_background(work) -> tuple[threading.Thread, list[float]]:
    stamps: list[float] = []

    def run() -> None:
        work(stamps)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, stamps


def test_serialize_round_trips_and_holds_no_secret(s3: S3Emulator) -> None:
    conf = {"datasource": {"uri": "s3://bucket/raw", "conn_id": "aws_default"}, "dataset": "ds"}
    trigger = _trigger(conf, min_objects=5, max_wait_seconds=600.0)
    classpath, kwargs = trigger.serialize()
    assert classpath == "lightly_airflow.triggers.bucket_watch.BucketWatchTrigger"
    wire = json.loads(json.dumps(kwargs))  # plain JSON, as the triggerer stores it
    from airflow.sdk._shared.module_loading import import_string

    rebuilt = import_string(classpath)(**wire)
    assert rebuilt.serialize() == (classpath, kwargs)
    assert wire["min_objects"] == 5 and wire["max_wait_seconds"] == 600.0 and wire["conf"] == conf
    assert s3.secret not in json.dumps(kwargs)
    with pytest.raises(TypeError):
        BucketWatchTrigger(conf, "2026-01-01T00:00:00+00:00", 1.0)  # keyword-only


def test_run_on_a_folder_fires_once_after_the_quiet_period(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder, staging = tmp_path / "images", tmp_path / "staging"
    add_images(folder, n_images=2, seed=1, subdir="old")
    store_url = f"sqlite:///{tmp_path / 'store.db'}"
    _seed_datapool(store_url, folder.as_uri())
    new = add_images(staging, n_images=3, seed=2, subdir="new")
    # Each listing takes 1 s more (a blocking sleep, as a slow LIST would block): the loop must not stall.
    real_observe = trigger_module.observe

    def slow_observe(*args: Any, **kwargs: Any) -> Any:
        time.sleep(1.0)
        return real_observe(*args, **kwargs)

    monkeypatch.setattr(trigger_module, "observe", slow_observe)

    def upload(stamps: list[float]) -> None:
        time.sleep(0.8)
        for key in new:
            (folder / key).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(staging / key, folder / key)
            stamps.append(time.monotonic())
            time.sleep(0.5)

    thread, stamps = _in_background(upload)
    conf = {"datasource": {"uri": folder.as_uri()}, "dataset": "ds", "store_url": store_url}
    events, fired, stall = _run(_trigger(conf))
    thread.join()
    [event] = events
    assert event["status"] == "new_objects"
    assert event["keys"] == sorted(new) and event["n_objects"] == 3
    assert event["bytes"] == sum((folder / k).stat().st_size for k in new)
    assert event["datasource"] == folder.as_uri()
    assert fired - stamps[-1] >= QUIET  # nothing fired while the upload was still going on
    assert stall < 0.5, f"the event loop stalled for {stall:.2f} s"


def test_run_on_s3_fires_once_with_exactly_the_uploaded_objects(tmp_path: Path, s3: S3Emulator) -> None:
    bucket = s3.new_bucket("trigger")
    folder = tmp_path / "images"
    old = add_images(folder, n_images=2, seed=3, subdir="old")
    new = add_images(folder, n_images=3, seed=4, subdir="new")
    s3.upload_folder(folder, bucket, "raw/", keys=old)
    store_url = f"sqlite:///{tmp_path / 'store.db'}"
    uri = f"s3://{bucket}/raw"
    assert sorted(_seed_datapool(store_url, uri, "aws_default")) == sorted(old)
    client = s3.client()

    def upload(stamps: list[float]) -> None:
        time.sleep(0.8)
        for key in new:
            client.put_object(Bucket=bucket, Key=f"raw/{key}", Body=(folder / key).read_bytes())
            stamps.append(time.monotonic())
            time.sleep(0.4)
        client.put_object(Bucket=bucket, Key="other/outside-the-prefix.jpg", Body=(folder / new[0]).read_bytes())

    thread, stamps = _in_background(upload)
    conf = {"datasource": {"uri": uri}, "dataset": "ds", "store_url": store_url}
    events, fired, _ = _run(_trigger(conf, min_objects=3))
    thread.join()
    [event] = events
    assert event["status"] == "new_objects" and event["keys"] == sorted(new)
    assert event["datasource"] == uri and event["n_listed"] == 5
    assert fired - stamps[-1] >= QUIET
    assert s3.secret not in json.dumps(event)


def test_nothing_new_ends_idle_at_the_deadline(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    add_images(folder, n_images=2, seed=5)
    store_url = f"sqlite:///{tmp_path / 'store.db'}"
    _seed_datapool(store_url, folder.as_uri())
    conf = {"datasource": {"uri": folder.as_uri()}, "dataset": "ds", "store_url": store_url}
    started = time.monotonic()
    [event], _, _ = _run(_trigger(conf, window=1.0))
    assert event == {"status": "idle", "dataset": "ds", "datasource": folder.as_uri(), "reason": "no new objects"}
    assert 1.0 <= time.monotonic() - started < 10


def test_a_running_curation_holds_the_trigger_back(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    add_images(folder, n_images=2, seed=6)
    store_url = f"sqlite:///{tmp_path / 'store.db'}"
    store = DatasetStore(store_url)
    store.acquire_lease("ds", "manual__busy", ttl_seconds=600)
    store.close()
    conf = {"datasource": {"uri": folder.as_uri()}, "dataset": "ds", "store_url": store_url}
    [event], _, _ = _run(_trigger(conf, window=1.0, quiet_seconds=0.0))
    assert event["status"] == "idle" and "manual__busy" in event["reason"]


def test_a_missing_datasource_is_an_error_event(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    conf = {"datasource": {"uri": missing.as_uri()}, "dataset": "ds", "store_url": f"sqlite:///{tmp_path / 's.db'}"}
    [event], _, _ = _run(_trigger(conf))
    assert event["status"] == "error" and event["dataset"] == "ds"
    assert "DatasourceNotFoundError" in event["message"] and missing.as_uri() in event["message"]


def test_sensor_defers_to_the_trigger_and_claims_on_completion(tmp_path: Path) -> None:
    store_url = f"sqlite:///{tmp_path / 'store.db'}"
    conf = {"datasource": {"uri": (tmp_path / "images").as_uri()}, "dataset": "ds", "store_url": store_url}
    sensor = BucketWatchSensor(
        task_id="watch_ds", conf=conf, quiet_seconds=5, min_objects=2, poll_seconds=3, window_seconds=60
    )
    before = datetime.now(UTC)
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute(context={})
    assert deferred.value.method_name == "execute_complete"
    assert deferred.value.timeout == timedelta(seconds=2 * 60 + 600)
    trigger = deferred.value.trigger
    assert isinstance(trigger, BucketWatchTrigger)
    _, kwargs = trigger.serialize()
    deadline = datetime.fromisoformat(kwargs.pop("deadline"))
    assert before + timedelta(seconds=60) <= deadline <= datetime.now(UTC) + timedelta(seconds=60)
    assert kwargs == {"conf": conf, "quiet_seconds": 5, "min_objects": 2, "max_wait_seconds": None, "poll_seconds": 3}

    event = {"status": "new_objects", "dataset": "ds", "datasource": "file:///x", "n_objects": 2, "bytes": 9,
             "keys": ["a.jpg", "b.jpg"], "keys_truncated": False}
    result = sensor.execute_complete(context={}, event=event)
    assert result["keys"] == ["a.jpg", "b.jpg"] and "status" not in result
    assert result["run_id"] == f"manual__{result['logical_date']}"
    store = DatasetStore(store_url)
    try:
        assert store.lease("ds").holder == result["run_id"]  # claimed for the run about to be triggered
    finally:
        store.close()
    with pytest.raises(AirflowSkipException, match="curated by run"):
        sensor.execute_complete(context={}, event=event)  # a racing watch finds the dataset claimed
    with pytest.raises(AirflowSkipException, match="nothing to curate"):
        sensor.execute_complete(context={}, event={"status": "idle", "dataset": "ds", "reason": "no new objects"})
    with pytest.raises(BucketWatchError, match="failed: DatasourceNotFoundError: gone"):
        sensor.execute_complete(context={}, event={"status": "error", "dataset": "ds",
                                                   "message": "DatasourceNotFoundError: gone"})


def test_sensor_rejects_a_bad_conf_before_deferring() -> None:
    sensor = BucketWatchSensor(task_id="watch_bad", conf={"datasource": {"uri": "ftp://x"}, "dataset": "ds"})
    with pytest.raises(ConfigError, match=r"datasource\.uri"):
        sensor.execute(context={})


def test_two_watches_racing_to_claim_one_dataset(tmp_path: Path) -> None:
    """Two sensors resume with the same news at once: exactly one claims the dataset, the other skips."""
    store_url = f"sqlite:///{tmp_path / 'store.db'}"
    conf = {"datasource": {"uri": (tmp_path / "images").as_uri()}, "dataset": "ds", "store_url": store_url}
    sensors = [BucketWatchSensor(task_id=f"watch_{i}", conf=conf) for i in range(2)]
    event = {"status": "new_objects", "dataset": "ds", "datasource": "file:///x", "n_objects": 1, "bytes": 1,
             "keys": ["a.jpg"], "keys_truncated": False}
    barrier = threading.Barrier(2)
    outcomes: list[Any] = []

    def resume(sensor: BucketWatchSensor) -> None:
        barrier.wait()
        try:
            outcomes.append(sensor.execute_complete(context={}, event=dict(event)))
        except AirflowSkipException as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=resume, args=(s,)) for s in sensors]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    claimed = [o for o in outcomes if isinstance(o, dict)]
    skipped = [o for o in outcomes if isinstance(o, AirflowSkipException)]
    assert len(claimed) == 1 and len(skipped) == 1, outcomes
    assert claimed[0]["run_id"] in str(skipped[0])
