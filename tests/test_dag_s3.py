"""The whole ``lightly_curation`` DAG on an S3 datasource (moto server behind the counting proxy).

One module-scoped scenario, two ``dag.test()`` runs: a first run with artifacts and the dump in other
buckets (through a second connection), an object over ``max_object_bytes`` and folder markers, and a run on a
bucket that does not exist. The proxy measures what crossed the network to the datasource bucket,
independently of the pipeline's own byte counters, and every trace of the runs is searched for the
connections' secrets. The datapool rerun and ``process_all`` on S3 are in the datasource matrix
(tests/test_dag_datasources.py), which runs them on file, S3, GCS and Azure alike.
"""

from __future__ import annotations

import collections
import io
import json
import os
import uuid
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from lightly_tasks.artifacts import safe_run_id
from lightly_tasks.demo_data import build_demo_folder
from lightly_tasks.store import DatasetStore
from tests.airflow_dags import load_dag, run_with_logs
from tests.s3_server import S3Emulator

pytestmark = pytest.mark.dag

N_SAMPLES = 8
MAX_OBJECT_BYTES = 2 * 2**20
HUGE_KEY = "huge/panorama.png"


@pytest.fixture(scope="module")
def scenario(tmp_path_factory, airflow_db, s3: S3Emulator) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("curation-s3")
    folder = root / "images"
    demo = build_demo_folder(folder, n_images=24, seed=5)
    src, art, out = s3.new_bucket("src"), s3.new_bucket("art"), s3.new_bucket("out")
    s3.upload_folder(folder, src, "raw/")
    client = s3.client()
    for marker in ("raw/", "raw/animals/", "raw/empty folder/"):
        client.put_object(Bucket=src, Key=marker, Body=b"")
    client.put_object(Bucket=src, Key=f"raw/{HUGE_KEY}", Body=os.urandom(MAX_OBJECT_BYTES + 1))
    artifacts_secret = f"lightly-artifacts-secret-{uuid.uuid4().hex}"
    os.environ["AIRFLOW_CONN_AWS_ARTIFACTS"] = s3.connection_json(secret=artifacts_secret)

    conf = {
        "datasource": {"uri": f"s3://{src}/raw"},
        "dataset": "ds",
        "stopping_condition": {"n_samples": N_SAMPLES},
        "artifacts_root": f"s3://{art}/lightly",
        "artifacts_conn_id": "aws_artifacts",
        "store_url": f"sqlite:///{root / 'store.db'}",
        "dump": {"output": f"s3://{out}/selected"},
        "embedding": {"image_size": 64},
        "num_shards": 2,
        "max_object_bytes": MAX_OBJECT_BYTES,
    }
    dag = load_dag("lightly_curation")
    runs: dict[str, Any] = {}
    traffic: dict[str, list] = {}
    logs: dict[str, str] = {}
    try:
        s3.proxy.reset()
        runs["first"] = run_with_logs(dag, conf, logs, "first")
        traffic["first"] = s3.proxy.exchanges(src)
        missing = {**conf, "datasource": {"uri": "s3://no-such-bucket-lightly/raw"}}
        runs["missing"] = run_with_logs(dag, missing, logs, "missing")
    finally:
        os.environ.pop("AIRFLOW_CONN_AWS_ARTIFACTS", None)
    return {
        "root": root,
        "demo": demo,
        "src": src,
        "art": art,
        "out": out,
        "conf": conf,
        "runs": runs,
        "traffic": traffic,
        "logs": logs,
        "artifacts_secret": artifacts_secret,
    }


def _report(s3: S3Emulator, scenario: dict[str, Any], run: str) -> dict[str, Any]:
    key = f"lightly/ds/runs/{safe_run_id(scenario['runs'][run].run_id)}/report.json"
    return json.loads(s3.client().get_object(Bucket=scenario["art"], Key=key)["Body"].read())


def _lines(s3: S3Emulator, uri: str) -> list[str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    body = s3.client().get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    return [line for line in body.split("\n") if line]


def test_first_run_curates_the_bucket(s3: S3Emulator, scenario: dict[str, Any]) -> None:
    assert scenario["runs"]["first"].state == "success"
    report = _report(s3, scenario, "first")
    demo = scenario["demo"]
    sizes = report["datasetSizes"]
    assert sizes["nInput"] == len(demo.all_keys()) + 1  # the folder markers are not objects
    assert sizes["nSelected"] == N_SAMPLES
    assert sizes["nCorrupt"] == len(demo.broken) + 1
    assert sizes["nDuplicate"] == len(demo.duplicates)
    assert set(_lines(s3, report["outputs"]["corrupt_filenames"])) == {*demo.broken, HUGE_KEY}
    assert report["config"]["datasource"]["uri"] == scenario["conf"]["datasource"]["uri"]
    assert report["config"]["datasource"]["conn_id"] == "aws_default"


def test_bad_objects_get_their_reasons(s3: S3Emulator, scenario: dict[str, Any]) -> None:
    report = _report(s3, scenario, "first")
    bucket, _, key = report["outputs"]["corrupt_reasons"].removeprefix("s3://").partition("/")
    body = s3.client().get_object(Bucket=bucket, Key=key)["Body"].read()
    reasons = pd.read_parquet(io.BytesIO(body)).set_index("key")["reason"]
    for key, prefix in scenario["demo"].broken.items():
        assert reasons[key].startswith(prefix), (key, reasons[key])
    assert reasons[HUGE_KEY].startswith("too large:")


def test_artifacts_and_dump_are_in_their_buckets(s3: S3Emulator, scenario: dict[str, Any]) -> None:
    report = _report(s3, scenario, "first")
    run_prefix = f"lightly/ds/runs/{safe_run_id(scenario['runs']['first'].run_id)}/"
    client = s3.client()
    stored = {o["Key"] for o in client.list_objects_v2(Bucket=scenario["art"], Prefix=run_prefix)["Contents"]}
    for name in ("report.json", "list/objects.parquet", "selection/objects.parquet", "data/embeddings.csv",
                 "filenames/selected_filenames.txt", "metadata/metadata.parquet"):
        assert run_prefix + name in stored
    assert not any("/cache/" in k for k in stored), "the decoded cache is deleted after a successful run"
    selected = _lines(s3, report["outputs"]["selected_filenames"])
    assert len(selected) == N_SAMPLES
    for key in selected:
        dumped = client.get_object(Bucket=scenario["out"], Key=f"selected/{key}")["Body"].read()
        assert dumped == (scenario["root"] / "images" / key).read_bytes()


def test_self_reported_traffic_matches_the_wire(s3: S3Emulator, scenario: dict[str, Any]) -> None:
    report = _report(s3, scenario, "first")
    exchanges = scenario["traffic"]["first"]
    reported = report["traffic"]["bytesRead"]
    on_wire = sum(e.response_bytes for e in exchanges)  # all responses of the datasource bucket, with framing
    assert abs(on_wire - reported) <= 0.05 * reported, (on_wire, reported)

    object_gets = [e for e in exchanges if e.is_object_get]
    assert sum(e.response_body_bytes for e in object_gets) == reported
    assert {e.method for e in exchanges} == {"GET"}, "no HEAD or other requests against the datasource"
    gets_per_key = collections.Counter(e.key.removeprefix("raw/") for e in object_gets)
    selected = set(_lines(s3, report["outputs"]["selected_filenames"]))
    assert HUGE_KEY not in gets_per_key
    assert not {k for k, n in gets_per_key.items() if n != 1 + (k in selected)}, "read once, selected twice"

    dataset_bytes = report["traffic"]["datasourceBytes"]
    selected_bytes = report["stages"]["upload"]["bytesRead"]
    assert selected_bytes == sum((scenario["root"] / "images" / k).stat().st_size for k in selected)
    assert report["stages"]["corruptness"]["bytesRead"] <= 1.2 * dataset_bytes
    assert on_wire <= 1.2 * dataset_bytes + selected_bytes


def test_datapool_holds_every_listed_object_even_too_large_ones(scenario: dict[str, Any]) -> None:
    store = DatasetStore(scenario["conf"]["store_url"])
    try:
        seen = store.seen_objects("ds", f"s3://{scenario['src']}/raw")
    finally:
        store.close()
    assert set(seen) == {*scenario["demo"].all_keys(), HUGE_KEY}, "the failed run must leave the datapool as it was"


def test_missing_bucket_fails_the_list_task_naming_the_bucket(scenario: dict[str, Any]) -> None:
    from airflow.utils.state import TaskInstanceState

    run = scenario["runs"]["missing"]
    assert run.state == "failed"
    tis = {ti.task_id: ti for ti in run.get_task_instances()}
    assert tis["list"].state == TaskInstanceState.FAILED
    assert tis["list"].try_number == 1, "its own errors fail list at once (its retries are for a scheduler race)"
    assert "bucket 'no-such-bucket-lightly' does not exist" in scenario["logs"]["missing"]


def test_no_secret_in_logs_xcom_reports_or_store(
    s3: S3Emulator, scenario: dict[str, Any], airflow_db: Path
) -> None:
    secrets = [s3.secret.encode(), scenario["artifacts_secret"].encode()]
    places: dict[str, bytes] = {}
    for path in Path(airflow_db).rglob("*"):
        if path.is_file():
            places[str(path)] = path.read_bytes()  # task logs, the metadata DB with XCom, ...
    places["store.db"] = (scenario["root"] / "store.db").read_bytes()
    places.update({f"task logs of the {name} run": text.encode() for name, text in scenario["logs"].items()})
    client = s3.client()
    for bucket in (scenario["art"], scenario["out"]):
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                body = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
                places[f"s3://{bucket}/{obj['Key']}"] = body
    assert any("report.json" in p for p in places)
    assert "Returned value was" in scenario["logs"]["first"] and "listed " in scenario["logs"]["first"]
    leaks = [place for place, data in places.items() for secret in secrets if secret in data]
    assert not leaks, leaks

