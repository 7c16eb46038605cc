"""The S3 datasource against a real S3 API (moto server behind the counting proxy, see tests/s3_server.py).

Listing, reads, retries, error messages and the bad-object matrix are checked on the ``lightly_tasks``
functions directly, with Locations built the way the DAG builds them (``lightly_airflow.context``).
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
    DatasourceNotFoundError,
    Location,
    iter_object,
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


def test_listing_ignores_folder_markers_and_keeps_odd_keys(s3: S3Emulator) -> None:
    bucket = s3.new_bucket("odd")
    objects = {
        "raw/": b"",
        "raw/dir/": b"",
        "raw/dir.jpg/": b"",
        "raw/a b/ünï cødé 写真.jpg": b"\xff\xd8 unicode",
        "raw/100% c+d=e.png": b"png-ish",
        "raw/top.jpg": b"top",
        "raw/.hidden/h.jpg": b"hidden",
        "raw/notes.txt": b"text",
        "rawness/outside.jpg": b"outside the prefix",
    }
    _put(s3, bucket, objects)
    location = _location(f"s3://{bucket}/raw/")
    listed = list_objects(location)
    assert listed["key"].tolist() == ["100% c+d=e.png", "a b/ünï cødé 写真.jpg", "top.jpg"]
    assert listed["size"].tolist() == [7, len(objects["raw/a b/ünï cødé 写真.jpg"]), 3]
    assert listed["etag"].str.len().min() == 32 and listed["last_modified"].notna().all()
    for key, size in zip(listed["key"], listed["size"], strict=True):
        assert read_object(location, key, size=size) == objects[f"raw/{key}"]


def test_missing_bucket_names_the_bucket(s3: S3Emulator) -> None:
    with pytest.raises(DatasourceNotFoundError) as caught:
        list_objects(_location("s3://no-such-bucket-4711/raw"))
    message = str(caught.value)
    assert "bucket 'no-such-bucket-4711' does not exist" in message
    assert message.startswith("datasource s3://no-such-bucket-4711/raw:")
    assert s3.secret not in message


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


def test_corruptness_matrix_matches_the_local_folder(s3: S3Emulator, tmp_path: Path) -> None:
    folder = tmp_path / "demo"
    demo = build_demo_folder(folder, n_images=6, seed=2)
    bucket = s3.new_bucket("matrix")
    s3.upload_folder(folder, bucket, "raw/")
    local = location_from_uri(folder.as_uri())
    remote = _location(f"s3://{bucket}/raw")
    local_objects, remote_objects = list_objects(local), list_objects(remote)
    assert remote_objects["key"].tolist() == local_objects["key"].tolist() == demo.all_keys()
    assert remote_objects["size"].tolist() == local_objects["size"].tolist()

    local_table, local_bytes = _decode(local, local_objects, tmp_path / "local")
    s3.proxy.reset()
    remote_table, remote_bytes = _decode(remote, remote_objects, tmp_path / "remote")
    columns = ["verdict", "reason", "content_hash"]
    pd.testing.assert_frame_equal(remote_table[columns], local_table[columns])
    for key, prefix in demo.broken.items():
        assert remote_table.loc[key, "reason"].startswith(prefix)

    exchanges = s3.proxy.exchanges(bucket)
    assert {e.method for e in exchanges} == {"GET"}, "a read must not send HEAD or other requests"
    assert remote_bytes == local_bytes == int(remote_objects["size"].sum())
    assert sum(e.response_body_bytes for e in exchanges) == remote_bytes
    empty = [k for k, p in demo.broken.items() if p == "empty file"]
    assert empty and not {e.key for e in exchanges} & {f"raw/{k}" for k in empty}, "0-byte objects: no GET"


def test_vanished_zero_byte_and_too_large_objects(s3: S3Emulator, tmp_path: Path) -> None:
    bucket = s3.new_bucket("odd-objects")
    from lightly_tasks.demo_data import gray_jpeg

    image = gray_jpeg()
    _put(
        s3,
        bucket,
        {
            "raw/ok.jpg": image,
            "raw/gone.jpg": image + b"x",
            "raw/empty.jpg": b"",
            "raw/huge.png": os.urandom(300_000),
        },
    )
    location = _location(f"s3://{bucket}/raw")
    objects = list_objects(location)
    s3.client().delete_object(Bucket=bucket, Key="raw/gone.jpg")
    with pytest.raises(FileNotFoundError):
        read_object(location, "gone.jpg", size=len(image) + 1)
    s3.proxy.reset()
    table, read = _decode(location, objects, tmp_path, max_object_bytes=200_000)
    assert table.loc["ok.jpg", "verdict"] == "ok"
    assert table.loc["gone.jpg", "reason"].startswith("missing:")
    assert table.loc["empty.jpg", "reason"].startswith("empty file")
    assert table.loc["huge.png", "reason"].startswith("too large:")
    fetched = {e.key for e in s3.proxy.exchanges(bucket)}
    assert fetched == {"raw/ok.jpg", "raw/gone.jpg"}
    assert read == len(image)


def test_large_objects_stream_as_ranged_gets(s3: S3Emulator) -> None:
    bucket = s3.new_bucket("large")
    body = os.urandom(5 * 2**20 + 123)
    _put(s3, bucket, {"raw/big.tif": body})
    location = _location(f"s3://{bucket}/raw")
    s3.proxy.reset()
    counter = ByteCounter()
    chunks = list(iter_object(location, "big.tif", counter, size=len(body), chunk_bytes=2**20))
    assert b"".join(chunks) == body and counter.total == len(body)
    assert max(len(c) for c in chunks) == 2**20
    exchanges = s3.proxy.exchanges(bucket)
    assert [e.method for e in exchanges] == ["GET"] * 6
    assert all(e.byte_range.startswith("bytes=") and e.status == 206 for e in exchanges)
    assert sum(e.response_body_bytes for e in exchanges) == len(body)


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
