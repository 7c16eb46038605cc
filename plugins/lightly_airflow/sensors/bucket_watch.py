"""``BucketWatchSensor``: a deferrable sensor that waits in the triggerer for new objects of a datasource.

It defers at once to :class:`~lightly_airflow.triggers.bucket_watch.BucketWatchTrigger`. When the trigger
reports settled new objects, :meth:`BucketWatchSensor.execute_complete` (on a worker) claims the dataset's lease
for the curation run that the next task will trigger and returns the manifest (with that run's id and logical
date) as its XCom. A dataset that another run holds meanwhile, or a watch window without new objects, skips the
task; an error event fails it with the trigger's message.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import BaseSensorOperator
from airflow.sdk.exceptions import AirflowSkipException

from lightly_airflow.triggers.bucket_watch import EVENT_ERROR, EVENT_IDLE, EVENT_NEW_OBJECTS, BucketWatchTrigger
from lightly_tasks.config import parse_config
from lightly_tasks.store import DatasetBusyError, DatasetStore


class BucketWatchError(RuntimeError):
    """Watching the datasource failed (e.g. missing bucket, denied access, unreachable store)."""


class BucketWatchSensor(BaseSensorOperator):
    """Wait (deferred) until the datasource of ``conf`` has new, settled objects for its dataset.

    ``conf`` is the ``lightly_curation`` conf of the runs this watch triggers; the other arguments are the
    :class:`~lightly_tasks.watch_config.WatchSettings` of the watch.
    """

    template_fields = ()

    def __init__(
        self,
        *,
        conf: dict[str, Any],
        quiet_seconds: float = 60.0,
        min_objects: int = 1,
        max_wait_seconds: float | None = None,
        poll_seconds: float = 30.0,
        window_seconds: float = 900.0,
        claim_seconds: float = 3600.0,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("timeout", timedelta(seconds=2 * window_seconds + 600))
        super().__init__(**kwargs)
        self.conf = conf
        self.quiet_seconds = quiet_seconds
        self.min_objects = min_objects
        self.max_wait_seconds = max_wait_seconds
        self.poll_seconds = poll_seconds
        self.window_seconds = window_seconds
        self.claim_seconds = claim_seconds

    def execute(self, context: Any) -> None:
        """Validate the conf (a bad one fails here, naming the key) and defer to the trigger."""
        parse_config(self.conf)
        deadline = datetime.now(UTC) + timedelta(seconds=self.window_seconds)
        self.defer(
            trigger=BucketWatchTrigger(
                conf=self.conf,
                deadline=deadline.isoformat(),
                quiet_seconds=self.quiet_seconds,
                min_objects=self.min_objects,
                max_wait_seconds=self.max_wait_seconds,
                poll_seconds=self.poll_seconds,
            ),
            method_name="execute_complete",
            timeout=timedelta(seconds=self.timeout),
        )

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        """Claim the dataset for the run to trigger and return the manifest, or skip/fail as the event says."""
        status = event.get("status")
        dataset = event.get("dataset")
        if status == EVENT_ERROR:
            raise BucketWatchError(f"watching the datasource of dataset {dataset!r} failed: {event.get('message')}")
        if status == EVENT_IDLE:
            raise AirflowSkipException(
                f"nothing to curate in {event.get('datasource')} for dataset {dataset!r} within the watch "
                f"window of {self.window_seconds:g} s: {event.get('reason')}"
            )
        if status != EVENT_NEW_OBJECTS:
            raise BucketWatchError(f"unexpected trigger event {event!r}")
        logical_date = datetime.now(UTC)
        run_id = f"manual__{logical_date.isoformat()}"
        try:
            claim(self.conf, run_id, ttl_seconds=self.claim_seconds)
        except DatasetBusyError as exc:
            raise AirflowSkipException(f"not triggering: {exc}") from None
        self.log.info(
            "%d new objects (%d bytes) in %s; triggering run %s of dataset %s",
            event["n_objects"],
            event["bytes"],
            event["datasource"],
            run_id,
            dataset,
        )
        manifest = {k: v for k, v in event.items() if k != "status"}
        return {**manifest, "run_id": run_id, "logical_date": logical_date.isoformat()}


def claim(conf: dict[str, Any], run_id: str, *, ttl_seconds: float) -> None:
    """Lease the conf's dataset for ``run_id``; raises DatasetBusyError when another run holds it."""
    config = parse_config(conf)
    store = DatasetStore(config.store_url)
    try:
        store.acquire_lease(config.dataset, run_id, ttl_seconds=ttl_seconds)
    finally:
        store.close()


def release_claim_callback(conf: dict[str, Any], sensor_task_id: str) -> Any:
    """An ``on_failure_callback`` for the trigger task: drop the claim when the run could not be triggered."""
    return functools.partial(_release_claim, conf, sensor_task_id)


def _release_claim(conf: dict[str, Any], sensor_task_id: str, context: Any) -> None:
    claimed = context["ti"].xcom_pull(task_ids=sensor_task_id)
    if not claimed:
        return
    config = parse_config(conf)
    store = DatasetStore(config.store_url)
    try:
        store.release_lease(config.dataset, claimed["run_id"])
    finally:
        store.close()
