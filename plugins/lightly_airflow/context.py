"""Build a :class:`lightly_tasks.pipeline.RunContext` inside a task: parse Params, resolve connections."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from airflow.sdk import ObjectStoragePath

from lightly_tasks.config import parse_config, redact_uri
from lightly_tasks.pipeline import RunContext
from lightly_tasks.storage import Location


def location_for(uri: str, conn_id: str | None = None) -> Location:
    """A :class:`Location` for ``uri`` whose filesystem carries the Airflow connection's credentials."""
    path = ObjectStoragePath(uri, conn_id=conn_id)
    root = path.path.rstrip("/") or "/"
    return Location(fs=path.fs, root=root, uri=redact_uri(uri.rstrip("/")))


def run_context(params: Mapping[str, Any], run_id: str) -> RunContext:
    """The run's typed config and locations; raises ``ConfigError`` (naming the key) on a bad conf."""
    config = parse_config(dict(params))
    return RunContext(
        config=config,
        run_id=run_id,
        datasource=location_for(config.datasource.uri, config.datasource.conn_id),
        artifacts=location_for(config.artifacts_root),
        resolve=location_for,
    )
