"""DAG ``lightly_curation``: one curation run from a datasource into the dataset store.

Thin wiring only: every task builds the run context from the Params and calls a stage of
``lightly_tasks.pipeline``. Optional stages (frame counting, training, pretagging) are in the graph and skip
themselves when the configuration does not enable them.

Created paused. A daily data-interval timetable (``LIGHTLY_CURATION_SCHEDULE``) serves ``airflow backfill
create`` and scheduled runs; S3 events start runs too when ``LIGHTLY_S3_EVENTS_QUEUE`` is set; runs without a
conf use ``LIGHTLY_CURATION_CONF`` (see ``lightly_airflow.schedule``). A run whose dataset another run is
curating waits at ``list``, rescheduled (``lightly_airflow.dataset_lease``).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import pendulum
from airflow.sdk import Param, dag, task
from airflow.sdk.exceptions import AirflowSkipException
from lightly_airflow.context import run_context
from lightly_airflow.dataset_lease import wait_while_busy
from lightly_airflow.schedule import curation_schedule, default_conf, nothing_to_curate, with_defaults

from lightly_tasks import pipeline
from lightly_tasks.config import ConfigError, param_schemas
from lightly_tasks.windows import RunWindow

log = logging.getLogger(__name__)
# Celery queue of the torch stages; docker-compose sets it to "gpu" when a GPU worker runs.
GPU_QUEUE = os.environ.get("LIGHTLY_GPU_QUEUE", "default")
# Conf of runs started without one (scheduled, S3 events): $LIGHTLY_CURATION_CONF, validated here.
DEFAULT_CONF = default_conf()


def _params() -> dict[str, Param]:
    params = {}
    for name, schema in with_defaults(param_schemas(), DEFAULT_CONF).items():
        schema = dict(schema)
        default = schema.pop("default")
        params[name] = Param(default, **schema)
    return params


@dag(
    dag_id="lightly_curation",
    schedule=curation_schedule(DEFAULT_CONF),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    is_paused_upon_creation=True,
    max_active_runs=1,
    params=_params(),
    tags=["lightly", "curation"],
    doc_md=__doc__,
    default_args={"retries": 1, "retry_delay": pendulum.duration(seconds=30)},
)
def lightly_curation() -> None:
    @task.short_circuit(task_id="has_datasource", retries=0)
    def has_datasource(params: dict[str, Any] | None = None, dag_run: Any = None) -> bool:
        """Skip the whole run when nobody triggered it and no conf names a datasource."""
        reason = nothing_to_curate(params, dag_run.run_type)
        if reason:
            log.warning("skipping the run: %s", reason)
        return reason is None

    # Retries: Airflow's scheduler can fail a rescheduled task on a late executor event of its previous
    # attempt (apache/airflow#71172); a retry takes the waiting up again (see lightly_airflow.dataset_lease).
    @task(task_id="list", retries=2, retry_delay=pendulum.duration(seconds=10))
    def list_objects(
        params: dict[str, Any] | None = None,
        run_id: str | None = None,
        data_interval_start: pendulum.DateTime | None = None,
        data_interval_end: pendulum.DateTime | None = None,
    ) -> list[dict[str, Any]]:
        window = RunWindow(start=data_interval_start, end=data_interval_end)
        return pipeline.per_shard(wait_while_busy(lambda: pipeline.list_stage(run_context(params, run_id), window)))

    @task(task_id="frame_counting")
    def frame_counting(params: dict[str, Any] | None = None, run_id: str | None = None) -> dict:
        if params["input_type"] != "videos":
            raise AirflowSkipException("input_type is not 'videos': no frames to count")
        from lightly_tasks import video_stages  # PyAV: imported in the task to keep DAG parsing fast

        return video_stages.frame_counting_stage(run_context(params, run_id))

    @task(trigger_rule="none_failed")
    def corruptness(listed: dict, params: dict[str, Any] | None = None, run_id: str | None = None) -> dict:
        return pipeline.corruptness_stage(run_context(params, run_id), listed["shard"])

    @task(task_id="training", trigger_rule="none_failed", queue=GPU_QUEUE)
    def training(
        decoded: list[dict], params: dict[str, Any] | None = None, run_id: str | None = None
    ) -> dict:
        if not params["enable_training"]:
            raise AirflowSkipException("enable_training is false")
        return pipeline.training_stage(run_context(params, run_id), [m["shard"] for m in decoded])

    @task(trigger_rule="none_failed", queue=GPU_QUEUE)
    def embedding(decoded: dict, params: dict[str, Any] | None = None, run_id: str | None = None) -> dict:
        return pipeline.embedding_stage(run_context(params, run_id), decoded["shard"])

    @task(task_id="pretagging", trigger_rule="none_failed", queue=GPU_QUEUE)
    def pretagging(decoded: dict, params: dict[str, Any] | None = None, run_id: str | None = None) -> dict:
        if not params["pretagging"]:
            raise AirflowSkipException("pretagging is false: no model predictions in this run")
        return pipeline.pretagging_stage(run_context(params, run_id), decoded["shard"])

    @task(trigger_rule="none_failed")
    def selection(
        embedded: list[dict], params: dict[str, Any] | None = None, run_id: str | None = None
    ) -> dict:
        return pipeline.selection_stage(run_context(params, run_id), [m["shard"] for m in embedded])

    @task(trigger_rule="none_failed")
    def metadata(selected: dict, params: dict[str, Any] | None = None, run_id: str | None = None) -> dict:
        return pipeline.metadata_stage(run_context(params, run_id))

    @task(trigger_rule="none_failed")
    def upload(
        listing: list[dict],
        decoded: list[dict],
        embedded: list[dict],
        selected: dict,
        meta: dict,
        trained: dict | None,
        pretagged: list[dict] | None,
        params: dict[str, Any] | None = None,
        run_id: str | None = None,
    ) -> dict:
        return pipeline.upload_stage(
            run_context(params, run_id),
            listing=listing[0],
            decoded=list(decoded),
            embedded=list(embedded),
            selection=selected,
            metadata=meta,
            training=trained,
            pretagging=list(pretagged or []),
        )

    @task(task_id="release_lease", retries=0)
    def release_lease(params: dict[str, Any] | None = None, run_id: str | None = None) -> bool:
        """Teardown: drop the dataset's lease if this run still holds it (a committed run released it)."""
        try:
            ctx = run_context(params, run_id)
        except ConfigError as exc:
            raise AirflowSkipException(f"the conf is invalid, so no lease was taken: {exc}") from None
        return pipeline.release_stage(ctx)

    listing = list_objects()
    has_datasource() >> listing
    counted = frame_counting()
    decoded = corruptness.expand(listed=listing)
    trained = training(decoded)
    embedded = embedding.expand(decoded=decoded)
    pretagged = pretagging.expand(decoded=decoded)
    selected = selection(embedded)
    meta = metadata(selected)
    listing >> counted >> decoded >> trained >> embedded >> selected
    pretagged >> selected  # pretagging needs only the decoded cache; selection may use its predictions
    upload(listing, decoded, embedded, selected, meta, trained, pretagged) >> release_lease().as_teardown()


lightly_curation()
