"""Event mode for S3: bucket notifications -> SQS queue -> an ``AssetWatcher`` -> runs of ``lightly_curation``.

S3 sends an ``s3:ObjectCreated:*`` notification per new object to an SQS queue. The common-messaging
provider's ``MessageQueueTrigger`` (scheme ``sqs``, served by the amazon provider's ``SqsSensorTrigger``) runs in
the triggerer, long-polls the queue, deletes what it receives and emits one trigger event per batch; the
watcher turns each into an event of the asset below, and ``lightly_curation`` is scheduled on that asset. A run
started that way is an ordinary datapool run of the watched datasource: it processes every object the datapool
has not seen, so a burst of uploads that lands while a run is busy is picked up by the next one, and a lost or
duplicated notification changes nothing but when the objects are processed.

Enabled only when ``LIGHTLY_S3_EVENTS_QUEUE`` holds the queue URL; without it the DAG has no watcher.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from airflow.sdk import Asset, AssetWatcher

from lightly_tasks.config import parse_config, uri_scheme
from lightly_tasks.windows import split_template

QUEUE_ENV = "LIGHTLY_S3_EVENTS_QUEUE"
"""URL of the SQS queue the bucket notifications go to; event mode is off when unset."""
CONN_ENV = "LIGHTLY_S3_EVENTS_CONN_ID"
"""Airflow connection for SQS; unset: the datasource's connection (aws_default by default)."""
POLL_ENV = "LIGHTLY_S3_EVENTS_POLL_SECONDS"
"""Pause between two empty long polls of the queue (each long poll itself waits up to 20 s)."""
ASSET_NAME = "lightly_s3_events"
OBJECT_KEYS_PATH = "Records[*].s3.object.key"
"""JSONPath that an S3 event notification matches; S3's own ``s3:TestEvent`` message does not."""


def s3_events_trigger(queue_url: str, *, conn_id: str | None, poll_seconds: int = 10) -> Any:
    """The message-queue trigger that watches ``queue_url`` for S3 object notifications."""
    from airflow.providers.common.messaging.triggers.msg_queue import MessageQueueTrigger

    return MessageQueueTrigger(
        scheme="sqs",
        sqs_queue=queue_url,
        aws_conn_id=conn_id,
        max_messages=10,
        wait_time_seconds=20,
        waiter_delay=poll_seconds,
        message_filtering="jsonpath",
        message_filtering_config=OBJECT_KEYS_PATH,
    )


def s3_events_asset(conf: Mapping[str, Any]) -> Asset | None:
    """The watched asset when ``LIGHTLY_S3_EVENTS_QUEUE`` is set, else None.

    ``conf`` is the conf that runs without one use (``LIGHTLY_CURATION_CONF``); it must name an S3 datasource
    without a time window, since an event-started run takes what is new from the datapool. Raises ValueError
    naming the environment variable otherwise.
    """
    queue_url = os.environ.get(QUEUE_ENV, "").strip()
    if not queue_url:
        return None
    if not conf:
        raise ValueError(
            f"{QUEUE_ENV} is set but LIGHTLY_CURATION_CONF is not: runs started by S3 events take their "
            "datasource and dataset from LIGHTLY_CURATION_CONF"
        )
    config = parse_config(conf)
    root, template = split_template(config.datasource.uri)
    if uri_scheme(root) != "s3":
        raise ValueError(f"{QUEUE_ENV} watches S3 notifications; LIGHTLY_CURATION_CONF must name an s3:// datasource")
    if template or config.datasource.window != "none":
        raise ValueError(
            f"{QUEUE_ENV}: runs started by S3 events process what the datapool has not seen; "
            "LIGHTLY_CURATION_CONF must use datasource.window 'none' and a URI without a prefix template"
        )
    poll = os.environ.get(POLL_ENV, "").strip()
    try:
        poll_seconds = int(poll) if poll else 10
    except ValueError as exc:
        raise ValueError(f"{POLL_ENV}: expected whole seconds, got {poll!r}") from exc
    conn_id = os.environ.get(CONN_ENV, "").strip() or config.datasource.conn_id
    trigger = s3_events_trigger(queue_url, conn_id=conn_id, poll_seconds=max(poll_seconds, 0))
    return Asset(
        name=ASSET_NAME,
        uri=root.rstrip("/"),
        watchers=[AssetWatcher(name=f"{ASSET_NAME}_sqs", trigger=trigger)],
    )
