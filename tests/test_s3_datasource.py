"""What only the S3 datasource has, against a real S3 API (moto server behind the counting proxy).

Listing pages, denied access, botocore's retry settings under injected faults and a persistent failure of one
object. The behaviours all stores share (odd keys, missing bucket, the bad-object matrix, ranged reads) are
parametrised over S3, GCS and Azure in tests/test_cloud_datasources.py.
"""

from __future__ import annotations

import dataclasses
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest

from lightly_tasks.config import ConfigError, parse_config
from lightly_tasks.decoding import decode_shard
from lightly_tasks.demo_data import build_demo_folder
from lightly_tasks.storage import (
    ByteCounter,
    DatasourceAccessError,
    Location,
    list_objects,
    location_from_uri,
    read_object,
)
from tests.s3_server import S3Emulator
from tests.traffic_proxy import Fault


def _location(uri: str, conn_id: str | None = "aws_default") -> Location:
    from lightly_airflow.context import location_for

    return location_for(uri, conn_id)


def _put(s3: S3Emulator, bucket: str, objects: dict[str, bytes]) -> None:
    client = s3.client()
    for key, body in objects.items():
        client.put_object(Bucket=bucket, Key=key, Body=body)


def _decode(location: Location, objects: pd.DataFrame, tmp_path: Path, **kwargs) -> tuple[pd.DataFrame, int]:
    counter = ByteCounter()
    cache = location_from_uri((tmp_path / "cache").as_uri())
    table = decode_shard(location, objects, cache, image_size=32, counter=counter, **kwargs)
    return table.set_index("key"), counter.total


def test_listing_pages_through_more_than_one_page(s3: S3Emulator) -> None:
    bucket = s3.new_bucket("many")
    client = s3.client()
    keys = [f"p/{i // 100:02d}/img_{i:05d}.jpg" for i in range(1050)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: client.put_object(Bucket=bucket, Key=k, Body=b"x"), keys))
    s3.proxy.reset()
    listed = list_objects(_location(f"s3://{bucket}/p"))
    assert listed["key"].tolist() == sorted(k.removeprefix("p/") for k in keys)
    pages = [e for e in s3.proxy.exchanges(bucket) if e.method == "GET" and "list-type=2" in e.query]
    assert len(pages) == 2


def test_denied_access_fails_with_a_clear_message(s3: S3Emulator) -> None:
    bucket = s3.new_bucket("denied")
    _put(s3, bucket, {"raw/a.jpg": b"a"})
    s3.proxy.add_fault(Fault(bucket=bucket, status=403, code="AccessDenied", times=None))
    try:
        with pytest.raises(DatasourceAccessError) as caught:
            list_objects(_location(f"s3://{bucket}/raw"))
    finally:
        s3.proxy.clear_faults()
    message = str(caught.value)
    assert f"access to bucket {bucket!r} denied" in message
    assert s3.secret not in message and s3.secret not in repr(caught.value.__cause__)


@pytest.mark.parametrize(
    "fault",
    [
        Fault(kind="status", status=503, code="SlowDown", times=2),
        Fault(kind="status", status=500, code="InternalError", times=1),
        Fault(kind="reset", times=1),
        Fault(kind="truncate", keep_bytes=1000, times=1),
    ],
    ids=["throttled", "5xx", "connection-reset", "cut-mid-body"],
)
def test_transient_errors_are_retried(s3: S3Emulator, fault: Fault) -> None:
    bucket = s3.new_bucket("flaky")
    body = os.urandom(50_000)
    _put(s3, bucket, {"raw/flaky.jpg": body})
    location = _location(f"s3://{bucket}/raw")
    s3.proxy.reset()
    s3.proxy.add_fault(dataclasses.replace(fault, bucket=bucket, method="GET", key_contains="flaky"))
    try:
        counter = ByteCounter()
        assert read_object(location, "flaky.jpg", counter, size=len(body)) == body
    finally:
        s3.proxy.clear_faults()
    assert counter.total == len(body)
    attempts = [e for e in s3.proxy.exchanges(bucket) if e.key == "raw/flaky.jpg"]
    assert len(attempts) == 1 + (fault.times or 0)
    assert attempts[-1].status in (200, 206)


def test_persistent_failure_of_one_object_is_a_verdict(s3: S3Emulator, tmp_path: Path, monkeypatch) -> None:
    bucket = s3.new_bucket("broken")
    demo = build_demo_folder(tmp_path / "demo", n_images=2, seed=1)
    s3.upload_folder(tmp_path / "demo", bucket, "raw/")
    # The connection's own retry settings win over the pipeline's default (8 attempts in all).
    monkeypatch.setenv(
        "AIRFLOW_CONN_AWS_FAST_FAIL",
        s3.connection_json(config_kwargs={"retries": {"max_attempts": 2, "mode": "standard"}}),
    )
    location = _location(f"s3://{bucket}/raw", "aws_fast_fail")
    objects = list_objects(location)
    victim = demo.convertible[0]
    s3.proxy.reset()
    s3.proxy.add_fault(Fault(bucket=bucket, key_contains=victim, status=500, code="InternalError",
                             times=None))
    try:
        table, _ = _decode(location, objects, tmp_path)
    finally:
        s3.proxy.clear_faults()
    assert table.loc[victim, "reason"].startswith("read error:")
    # botocore's max_attempts counts retries: one call and two retries, no more
    assert len([e for e in s3.proxy.exchanges(bucket) if e.key == f"raw/{victim}"]) == 3
    others = table.drop(index=victim)
    assert (others["reason"].fillna("").str.startswith(("read error", "missing"))).sum() == 0


def test_config_accepts_s3_and_resolves_connections() -> None:
    cfg = parse_config(
        {"datasource": {"uri": "s3://bucket/raw"}, "dataset": "d", "artifacts_root": "s3://other/art"}
    )
    assert cfg.datasource.conn_id == "aws_default" and cfg.artifacts_conn_id == "aws_default"
    assert cfg.max_object_bytes == 512 * 2**20
    cfg = parse_config({"datasource": {"uri": "s3://bucket/raw", "conn_id": "src"}, "dataset": "d"})
    assert cfg.artifacts_conn_id == "src"
    cfg = parse_config({"datasource": {"uri": "file:///data"}, "dataset": "d", "artifacts_root": "s3://a/b"})
    assert cfg.datasource.conn_id is None and cfg.artifacts_conn_id == "aws_default"
    with pytest.raises(ConfigError, match=r"datasource\.uri: must not carry credentials") as caught:
        parse_config({"datasource": {"uri": "s3://AKIA:very-secret@bucket/raw"}, "dataset": "d"})
    assert "very-secret" not in str(caught.value)
    with pytest.raises(ConfigError, match=r"datasource\.uri: names no bucket"):
        parse_config({"datasource": {"uri": "s3:///raw"}, "dataset": "d"})
    with pytest.raises(ConfigError, match="max_object_bytes: must be >= 1"):
        parse_config({"datasource": {"uri": "s3://b/raw"}, "dataset": "d", "max_object_bytes": 0})
