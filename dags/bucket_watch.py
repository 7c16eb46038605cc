"""DAG ``lightly_bucket_watch``: grow datasets automatically when new objects land in their datasources.

One deferrable sensor per watched datasource waits in the triggerer until objects that the dataset's datapool
has not seen have settled (no change for the quiet period, at least ``min_objects``) and no curation of that
dataset runs; then it leases the dataset for a new ``lightly_curation`` run, which the next task triggers with
the watch's conf. The watches come from the JSON file in ``$LIGHTLY_WATCH_CONFIG`` (else
``<LIGHTLY_HOME>/bucket_watch.json``), read when this file is parsed; see ``lightly_tasks/watch_config.py``.
Without watches the DAG has no schedule and one task that says how to configure them.
"""

from __future__ import annotations

import pendulum
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import dag, task
from lightly_airflow.schedule import default_conf
from lightly_airflow.sensors.bucket_watch import BucketWatchSensor, release_claim_callback

from lightly_tasks.config import ConfigError
from lightly_tasks.watch_config import WATCH_CONFIG_ENV, load_watch_file

CURATION_DAG_ID = "lightly_curation"
# what a triggered run's Params fill in from LIGHTLY_CURATION_CONF fills each watch's conf the same way
WATCHES = load_watch_file(defaults=default_conf())


@dag(
    dag_id="lightly_bucket_watch",
    schedule=WATCHES.schedule if WATCHES.watches else None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["lightly", "curation", "sensor"],
    doc_md=__doc__,
    default_args={"retries": 2, "retry_delay": pendulum.duration(minutes=1)},
)
def lightly_bucket_watch() -> None:
    if not WATCHES.watches:

        @task(task_id="no_watches", retries=0)
        def no_watches() -> None:
            raise ConfigError(
                f"no datasource is watched: write a watch file (see README, 'Grow a dataset automatically') and "
                f"point ${WATCH_CONFIG_ENV} at it, or put it at <LIGHTLY_HOME>/bucket_watch.json"
            )

        no_watches()
        return
    for watch in WATCHES.watches:
        settings = watch.settings
        sensor_id = f"watch_{watch.name}"
        claimed = f"ti.xcom_pull(task_ids={sensor_id!r})"
        sensor = BucketWatchSensor(
            task_id=sensor_id,
            conf=watch.conf,
            quiet_seconds=settings.quiet_seconds,
            min_objects=settings.min_objects,
            max_wait_seconds=settings.max_wait_seconds,
            poll_seconds=settings.poll_seconds,
            window_seconds=settings.window_seconds,
            claim_seconds=settings.claim_seconds,
        )
        trigger = TriggerDagRunOperator(
            task_id=f"trigger_{watch.name}",
            trigger_dag_id=CURATION_DAG_ID,
            conf=watch.conf,
            trigger_run_id="{{ " + claimed + "['run_id'] }}",
            logical_date="{{ " + claimed + "['logical_date'] }}",
            wait_for_completion=False,
            skip_when_already_exists=True,  # a retry after the run was created must not release its claim
            openlineage_inject_parent_info=False,
            on_failure_callback=release_claim_callback(watch.conf, sensor_id),
        )
        sensor >> trigger


lightly_bucket_watch()
