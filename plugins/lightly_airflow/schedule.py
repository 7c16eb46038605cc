"""When ``lightly_curation`` runs on its own: a data-interval timetable (for backfills), S3 events, a default conf.

* The timetable (``LIGHTLY_CURATION_SCHEDULE``, default ``@daily``, UTC) gives every scheduled and backfill run a
  data interval, which is what ``airflow backfill create`` needs and what ``datasource.window`` and prefix
  templates restrict the listing to (:mod:`lightly_tasks.windows`). The DAG is created paused: nothing runs
  until someone unpauses it.
* With ``LIGHTLY_S3_EVENTS_QUEUE`` set, S3 events start runs too (:mod:`lightly_airflow.s3_events`).
* ``LIGHTLY_CURATION_CONF`` (a JSON conf) is what runs started without a conf use (scheduled and S3-event
  runs), and prefills the trigger form. It is validated when the DAG file is parsed, so a bad one shows as a
  DAG import error naming the key.
* Without it, a run that nobody triggered (the daily schedule, a backfill or an event without a conf) has no
  datasource: :func:`nothing_to_curate` says so and the DAG skips the run instead of failing it every day
  once the DAG is unpaused for manual runs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from airflow.sdk import AssetOrTimeSchedule, CronDataIntervalTimetable

from lightly_airflow.s3_events import s3_events_asset
from lightly_tasks.config import conf_strings, merge_conf, parse_config, redact_uri

SCHEDULE_ENV = "LIGHTLY_CURATION_SCHEDULE"
CONF_ENV = "LIGHTLY_CURATION_CONF"
DEFAULT_SCHEDULE = "@daily"


def default_conf() -> dict[str, Any]:
    """The conf of runs started without one, from ``LIGHTLY_CURATION_CONF``; {} when unset.

    Raises ValueError naming the variable when it is not a JSON object or not a valid, complete conf.
    """
    raw = os.environ.get(CONF_ENV, "").strip()
    if not raw:
        return {}
    try:
        conf = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{CONF_ENV}: not valid JSON ({exc})") from exc
    if not isinstance(conf, dict):
        raise ValueError(f"{CONF_ENV}: expected a JSON object, got {type(conf).__name__}")
    try:
        parse_config(conf)
    except ValueError as exc:
        raise ValueError(f"{CONF_ENV}: {exc}") from exc
    for key, value in conf_strings(conf):
        if redact_uri(value) != value:
            raise ValueError(
                f"{CONF_ENV}: {key} holds a credential; it would show in the trigger form and every run's conf. "
                "Use an Airflow connection, or LIGHTLY_STORE_URL for the store"
            )
    return conf


def with_defaults(schemas: Mapping[str, dict[str, Any]], conf: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``schemas`` (param name -> JSON schema with ``default``) with the defaults overridden by ``conf``.

    Object-valued params (datasource, stopping_condition, ...) are merged key by key, so a conf that sets
    ``datasource.uri`` keeps the other datasource defaults (:func:`~lightly_tasks.config.merge_conf`).
    """
    defaults = merge_conf({name: schema["default"] for name, schema in schemas.items()}, conf)
    return {name: {**schema, "default": defaults[name]} for name, schema in schemas.items()}


def curation_schedule(conf: Mapping[str, Any]) -> Any:
    """The DAG's schedule: the cron data-interval timetable, or-ed with the S3 events asset when configured."""
    expression = os.environ.get(SCHEDULE_ENV, "").strip() or DEFAULT_SCHEDULE
    timetable = CronDataIntervalTimetable(expression, timezone="UTC")
    asset = s3_events_asset(conf)
    if asset is None:
        return timetable
    return AssetOrTimeSchedule(timetable=timetable, assets=asset)



UNATTENDED_RUN_TYPES = frozenset({"scheduled", "backfill", "asset_triggered"})
"""Run types that no person started with a conf of their own (Airflow's ``DagRunType`` values)."""


def nothing_to_curate(params: Mapping[str, Any], run_type: Any) -> str | None:
    """Why a run has nothing to curate, or None when it should go on.

    An unattended run (:data:`UNATTENDED_RUN_TYPES`) whose params name no datasource has nothing to do: the
    schedule fired, but ``LIGHTLY_CURATION_CONF`` is unset. A manual run without a datasource goes on, so that
    ``list`` fails with the configuration error the person who triggered it needs to see.
    """
    kind = str(getattr(run_type, "value", run_type))  # the task SDK's DagRunType enum or its value
    datasource = params.get("datasource") or {}
    uri = datasource.get("uri") if isinstance(datasource, Mapping) else None
    if uri or kind not in UNATTENDED_RUN_TYPES:
        return None
    return (
        f"a {kind} run without a datasource: {CONF_ENV} is unset, so runs nobody triggered have nothing to "
        f"curate. Set {CONF_ENV}, pass a conf (airflow backfill create --dag-run-conf ...), or pause the DAG"
    )
