"""Build a :class:`lightly_tasks.pipeline.RunContext` inside a task: parse Params, resolve connections."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from airflow.sdk import ObjectStoragePath
from airflow.sdk.io import get_fs
from fsspec import AbstractFileSystem

from lightly_airflow.cloud_filesystems import azure_filesystem, gcs_filesystem
from lightly_tasks.config import parse_config, redact_uri
from lightly_tasks.pipeline import RunContext
from lightly_tasks.storage import S3_CLIENT_CONFIG, Location
from lightly_tasks.windows import split_template


def location_for(uri: str, conn_id: str | None = None) -> Location:
    """A :class:`Location` for ``uri`` whose filesystem carries the Airflow connection's credentials."""
    scheme = urlsplit(uri).scheme
    if scheme in ("gs", "az"):
        # ObjectStoragePath has no az:// filesystem, and gcsfs's default class is not the one wanted (see
        # lightly_airflow.cloud_filesystems); the root is "bucket/prefix" either way
        parts = urlsplit(uri)
        fs = gcs_filesystem(conn_id) if scheme == "gs" else azure_filesystem(conn_id)
        return Location(fs=fs, root=f"{parts.netloc}{parts.path}".rstrip("/"), uri=redact_uri(uri.rstrip("/")))
    path = ObjectStoragePath(uri, conn_id=conn_id)
    root = path.path.rstrip("/") or "/"
    fs = _s3_filesystem(conn_id) if path.protocol in ("s3", "s3a") else path.fs
    return Location(fs=fs, root=root, uri=redact_uri(uri.rstrip("/")))


def _s3_filesystem(conn_id: str | None) -> AbstractFileSystem:
    """A fresh s3fs filesystem for the connection, with :data:`S3_CLIENT_CONFIG` under its own settings.

    The amazon provider reads credentials, ``endpoint_url``, region and ``config_kwargs`` from the connection;
    the retry policy is added for the keys that the connection's ``config_kwargs`` leave unset. A fresh
    filesystem per location also means no listing cache outlives a task.
    """
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    own = S3Hook(aws_conn_id=conn_id).conn_config.extra_config.get("config_kwargs") or {}
    options = {key: value for key, value in S3_CLIENT_CONFIG.items() if key not in own}
    return get_fs("s3", conn_id, storage_options=options)


def run_context(params: Mapping[str, Any], run_id: str) -> RunContext:
    """The run's typed config and locations; raises ``ConfigError`` (naming the key) on a bad conf.

    A datasource URI with a prefix template is rooted before the template (see :mod:`lightly_tasks.windows`).
    """
    config = parse_config(dict(params))
    return RunContext(
        config=config,
        run_id=run_id,
        datasource=location_for(split_template(config.datasource.uri)[0], config.datasource.conn_id),
        artifacts=location_for(config.artifacts_root, config.artifacts_conn_id),
        resolve=functools.partial(location_for, conn_id=config.artifacts_conn_id),
    )
