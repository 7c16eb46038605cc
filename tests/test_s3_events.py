"""Event mode for S3 on the moto server: bucket notification -> SQS -> the watcher's trigger -> an event.

moto delivers S3 event notifications to its own SQS queues, so the chain up to the trigger event is real: a put
into the bucket makes S3 (moto) send the notification, and the trigger that the DAG's asset watcher holds (the
common-messaging ``MessageQueueTrigger`` resolved to the amazon provider's ``SqsSensorTrigger``) long-polls the
queue through the Airflow connection and yields the event, run here with its own async ``run()``. That an asset
event then starts a run of ``lightly_curation`` needs a triggerer and a scheduler: see
``test_s3_event_starts_a_curation_run`` in tests/test_airflow_services.py (slow).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

import pytest

from tests.s3_server import REGION, S3Emulator

ACCOUNT = "123456789012"  # moto's default account


def s3_event_queue(s3: S3Emulator, bucket: str, prefix: str) -> str:
    """An SQS queue on moto that receives the bucket's ObjectCreated notifications below ``prefix``; its URL."""
    import boto3

    sqs = boto3.client(
        "sqs",
        endpoint_url=s3.direct_url,
        aws_access_key_id="AKIALIGHTLYTESTKEY01",
        aws_secret_access_key=s3.secret,
        region_name=REGION,
    )
    name = f"{bucket}-events"
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    s3.client().put_bucket_notification_configuration(
        Bucket=bucket,
        NotificationConfiguration={
            "QueueConfigurations": [
                {
                    "QueueArn": f"arn:aws:sqs:{REGION}:{ACCOUNT}:{name}",
                    "Events": ["s3:ObjectCreated:*"],
                    "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": prefix}]}},
                }
            ]
        },
    )
    return url


def _events_env(monkeypatch, queue_url: str, conf: dict[str, Any]) -> None:
    monkeypatch.setenv("LIGHTLY_S3_EVENTS_QUEUE", queue_url)
    monkeypatch.setenv("LIGHTLY_CURATION_CONF", json.dumps(conf))
    monkeypatch.setenv("LIGHTLY_S3_EVENTS_POLL_SECONDS", "1")


async def _first_event(trigger: Any, timeout: float) -> Any:
    async def first() -> Any:
        async for event in trigger.run():
            return event
        return None

    return await asyncio.wait_for(first(), timeout)


def test_s3_put_reaches_the_watchers_trigger_through_sqs(s3: S3Emulator, monkeypatch) -> None:
    from airflow.providers.amazon.aws.triggers.sqs import SqsSensorTrigger
    from lightly_airflow.s3_events import ASSET_NAME, s3_events_asset

    bucket = s3.new_bucket("events")
    queue_url = s3_event_queue(s3, bucket, "incoming/")
    conf = {"datasource": {"uri": f"s3://{bucket}/incoming"}, "dataset": "ev", "stopping_condition": {"n_samples": 5}}
    _events_env(monkeypatch, queue_url, conf)
    asset = s3_events_asset(conf)
    assert asset is not None and asset.name == ASSET_NAME and asset.uri == f"s3://{bucket}/incoming"
    trigger = asset.watchers[0].trigger

    # what the triggerer stores and rebuilds: the amazon provider's SQS trigger with our settings
    classpath, kwargs = trigger.serialize()
    assert classpath == "airflow.providers.amazon.aws.triggers.sqs.SqsSensorTrigger"
    assert kwargs["sqs_queue"] == queue_url and kwargs["aws_conn_id"] == "aws_default"
    assert kwargs["message_filtering"] == "jsonpath" and kwargs["waiter_delay"] == 1
    rebuilt = SqsSensorTrigger(**kwargs)

    client = s3.client()
    client.put_object(Bucket=bucket, Key="incoming/cam1/a.jpg", Body=b"jpeg bytes")
    client.put_object(Bucket=bucket, Key="elsewhere/b.jpg", Body=b"not watched")
    event = asyncio.run(_first_event(rebuilt, timeout=60))
    assert event is not None and event.payload["status"] == "success"
    records = [r for m in event.payload["message_batch"] for r in json.loads(m["Body"])["Records"]]
    # S3 URL-encodes the key in notifications (as AWS does)
    assert [(r["eventName"], r["s3"]["bucket"]["name"], unquote_plus(r["s3"]["object"]["key"])) for r in records] == [
        ("ObjectCreated:Put", bucket, "incoming/cam1/a.jpg")
    ]
    # the received notification was deleted: nothing but S3's own test event (filtered out) is left
    import boto3

    sqs = boto3.client(
        "sqs", endpoint_url=s3.direct_url, aws_access_key_id="x", aws_secret_access_key="x", region_name=REGION
    )
    left = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, VisibilityTimeout=0).get("Messages", [])
    assert all(json.loads(m["Body"]).get("Event") == "s3:TestEvent" for m in left)


def _dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(Path(__file__).resolve().parent.parent / "dags"))
    return bag


def test_without_the_queue_the_dag_has_no_watcher_and_runs_on_its_daily_timetable(monkeypatch) -> None:
    monkeypatch.delenv("LIGHTLY_S3_EVENTS_QUEUE", raising=False)
    monkeypatch.delenv("LIGHTLY_CURATION_CONF", raising=False)
    bag = _dag()
    assert not bag.import_errors, bag.import_errors
    dag = bag.dags["lightly_curation"]
    assert type(dag.timetable).__name__ == "CronDataIntervalTimetable"
    assert dag.timetable.expression == "0 0 * * *"
    assert dag.is_paused_upon_creation is True
    assert dag.params["datasource"]["uri"] == ""


def test_with_the_queue_the_dag_is_scheduled_on_the_watched_asset_or_time(monkeypatch) -> None:
    conf = {"datasource": {"uri": "s3://bkt/in"}, "dataset": "ev", "stopping_condition": {"n_samples": 5}}
    _events_env(monkeypatch, "https://sqs.us-east-1.amazonaws.com/123456789012/q", conf)
    bag = _dag()
    assert not bag.import_errors, bag.import_errors
    dag = bag.dags["lightly_curation"]
    assert type(dag.timetable).__name__ == "AssetOrTimeSchedule"
    asset = dag.timetable.asset_condition
    assert asset.uri == "s3://bkt/in" and len(asset.watchers) == 1
    # runs started by an event (no conf) take LIGHTLY_CURATION_CONF, merged into the form's defaults
    assert dag.params["datasource"] == {"uri": "s3://bkt/in", "conn_id": None, "process_all": False, "window": "none"}
    assert dag.params["dataset"] == "ev"


@pytest.mark.parametrize(
    ("conf", "message"),
    [
        (None, "LIGHTLY_CURATION_CONF is not"),
        ({"datasource": {"uri": "file:///data"}, "dataset": "ev"}, "must name an s3:// datasource"),
        ({"datasource": {"uri": "s3://b/raw/{{ ds }}"}, "dataset": "ev"}, "without a prefix template"),
        ({"datasource": {"uri": "s3://b/p", "window": "data_interval"}, "dataset": "ev"}, "window 'none'"),
        ({"datasource": {"uri": "s3://b/p"}, "dataset": "ev", "batch_size": "many"}, "batch_size: expected"),
        (
            {"datasource": {"uri": "s3://b/p"}, "dataset": "ev", "store_url": "postgresql://u:hunter2@db/store"},
            "store_url holds a credential",
        ),
    ],
)
def test_bad_event_mode_settings_are_dag_import_errors_naming_the_problem(monkeypatch, conf, message) -> None:
    monkeypatch.setenv("LIGHTLY_S3_EVENTS_QUEUE", "https://sqs.us-east-1.amazonaws.com/123456789012/q")
    if conf is None:
        monkeypatch.delenv("LIGHTLY_CURATION_CONF", raising=False)
    else:
        monkeypatch.setenv("LIGHTLY_CURATION_CONF", json.dumps(conf))
    bag = _dag()
    errors = "\n".join(bag.import_errors.values())
    assert message in errors, errors
    assert "hunter2" not in errors
