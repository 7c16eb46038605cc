"""The datasource matrix: the whole ``lightly_curation`` DAG on file, S3, GCS and Azure Blob alike.

For each datasource one module-scoped scenario runs ``dag.test()`` three times: a first run, a datapool rerun
after new objects land (it must process exactly those), and a ``process_all`` run. On the object stores the
artifacts live in a second bucket of the same store, the connections are the defaults (``aws_default``,
``google_cloud_default`` with a service-account key, ``wasb_default`` with an account key) pointing at the
emulators through the counting proxy, and every trace of the runs is searched for the credentials. The data
is tiny (a dozen small images plus the broken ones) so that the four scenarios stay within a few minutes.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from lightly_tasks.artifacts import safe_run_id
from lightly_tasks.demo_data import add_images, build_demo_folder
from lightly_tasks.store import DatasetStore
from tests.airflow_dags import load_dag, run_with_logs
from tests.cloud_emulators import ObjectStore, object_store_for

pytestmark = pytest.mark.dag

DATASOURCES = ["file", "s3", "gcs", "azure"]
REMOTE = [name for name in DATASOURCES if name != "file"]
"""The object stores: a wire to count bytes on and credentials to leak (a local folder has neither)."""
N_SAMPLES = 4
N_ADDED = 3


class Scenario:
    """The runs of one datasource and how to read what they wrote."""

    def __init__(self, name: str, store: ObjectStore | None, root: Path) -> None:
        self.name, self.store, self.root = name, store, root
        self.runs: dict[str, Any] = {}
        self.logs: dict[str, str] = {}
        self.fetched: dict[str, list] = {}

    def read(self, uri: str) -> bytes:
        if self.store is None:
            return Path(uri.removeprefix("file://")).read_bytes()
        return self.store.read_uri(uri)

    def report(self, run: str) -> dict[str, Any]:
        uri = f"{self.conf['artifacts_root']}/ds/runs/{safe_run_id(self.runs[run].run_id)}/report.json"
        return json.loads(self.read(uri))

    def lines(self, uri: str) -> list[str]:
        return [line for line in self.read(uri).decode().split("\n") if line]


@pytest.fixture(scope="module", params=DATASOURCES)
def scenario(request, tmp_path_factory, airflow_db) -> Scenario:
    name = request.param
    store = None if name == "file" else object_store_for(request, name)
    root = tmp_path_factory.mktemp(f"matrix-{name}")
    folder = root / "images"
    sc = Scenario(name, store, root)
    sc.demo = build_demo_folder(folder, n_images=8, seed=21)
    if store is None:
        datasource, artifacts = folder.as_uri(), (root / "artifacts").as_uri()
    else:
        src, art = store.new_bucket("src"), store.new_bucket("art")
        store.upload_folder(folder, src, "raw/")
        store.put_many(src, {"raw/": b"", "raw/empty folder/": b"", "raw/.hidden/skip.jpg": b"hidden"})
        datasource, artifacts, sc.src = store.uri(src, "raw"), store.uri(art, "lightly"), src
    sc.conf = {
        "datasource": {"uri": datasource},
        "dataset": "ds",
        "stopping_condition": {"n_samples": N_SAMPLES},
        "artifacts_root": artifacts,
        "store_url": f"sqlite:///{root / 'store.db'}",
        "embedding": {"image_size": 32},
        "batch_size": 16,
        "num_shards": 1,
    }
    dag = load_dag("lightly_curation")
    for run, conf in (("first", sc.conf), ("second", sc.conf)):
        if run == "second":
            sc.added = add_images(folder, n_images=N_ADDED, seed=22)
            if store is not None:
                store.upload_folder(folder, sc.src, "raw/", keys=sc.added)
        if store is not None:
            store.proxy.reset()
        sc.runs[run] = run_with_logs(dag, conf, sc.logs, run)
        if store is not None:
            sc.fetched[run] = [e for e in store.proxy.exchanges(sc.src) if e.method == "GET" and e.key]
    process_all = {**sc.conf, "datasource": {"uri": datasource, "process_all": True},
                   "stopping_condition": {"n_samples": 2}}
    sc.runs["third"] = run_with_logs(dag, process_all, sc.logs, "third")
    return sc


def _object_gets(sc: Scenario, run: str) -> list:
    """GETs of object bytes (not metadata) on the datasource bucket during ``run``."""
    return [e for e in sc.fetched[run] if e.status in (200, 206) and "comp=" not in e.query
            and not (sc.name == "gcs" and "alt=media" not in e.query)]


def test_first_run_curates_the_datasource(scenario: Scenario) -> None:
    assert scenario.runs["first"].state == "success", scenario.logs["first"][-3000:]
    report = scenario.report("first")
    sizes, demo = report["datasetSizes"], scenario.demo
    assert sizes["nInput"] == len(demo.all_keys())  # folder markers and hidden objects are not listed
    assert sizes["nCorrupt"] == len(demo.broken)
    assert sizes["nDuplicate"] == len(demo.duplicates)
    assert sizes["nSelected"] == N_SAMPLES
    assert report["config"]["datasource"]["uri"] == scenario.conf["datasource"]["uri"]
    reasons = pd.read_parquet(io.BytesIO(scenario.read(report["outputs"]["corrupt_reasons"])))
    reasons = reasons.set_index("key")["reason"]
    for key, prefix in demo.broken.items():
        assert reasons[key].startswith(prefix), (key, reasons[key])
    selected = scenario.lines(report["outputs"]["selected_filenames"])
    assert len(selected) == N_SAMPLES and not set(selected) & set(demo.broken)


@pytest.mark.parametrize("scenario", REMOTE, indirect=True)
def test_bytes_read_match_the_wire(scenario: Scenario) -> None:
    report = scenario.report("first")
    gets = _object_gets(scenario, "first")
    assert sum(e.response_body_bytes for e in gets) == report["traffic"]["bytesRead"]
    assert report["stages"]["corruptness"]["bytesRead"] == report["traffic"]["datasourceBytes"]
    per_key = pd.Series([e.key for e in gets]).value_counts()
    assert (per_key == 1).all(), "each object is read once per run"
    assert set(per_key.index) == {f"raw/{k}" for k in scenario.demo.all_keys() if k not in _empty(scenario)}


def _empty(sc: Scenario) -> set[str]:
    return {k for k, reason in sc.demo.broken.items() if reason == "empty file"}


def test_rerun_processes_only_the_new_objects(scenario: Scenario) -> None:
    assert scenario.runs["second"].state == "success", scenario.logs["second"][-3000:]
    sizes = scenario.report("second")["datasetSizes"]
    added = set(scenario.added)
    assert sizes["nInput"] == len(added)
    assert sizes["nSkippedSeen"] == sizes["nListed"] - len(added)
    assert sizes["nDatasetBefore"] == N_SAMPLES
    if scenario.store is not None:
        assert {e.key.removeprefix("raw/") for e in _object_gets(scenario, "second")} == added
    store = DatasetStore(scenario.conf["store_url"])
    try:
        seen = store.seen_objects("ds", scenario.conf["datasource"]["uri"])
    finally:
        store.close()
    assert set(seen) == set(scenario.demo.all_keys()) | added


def test_process_all_reconsiders_everything(scenario: Scenario) -> None:
    assert scenario.runs["third"].state == "success", scenario.logs["third"][-3000:]
    sizes = scenario.report("third")["datasetSizes"]
    assert sizes["nSkippedSeen"] == 0 and sizes["nInput"] == sizes["nListed"]
    assert sizes["nInDataset"] == sizes["nDatasetBefore"]
    assert sizes["nSelected"] == 2


@pytest.mark.parametrize("scenario", REMOTE, indirect=True)
def test_no_secret_in_logs_xcom_or_artifacts(scenario: Scenario, airflow_db: Path) -> None:
    store = scenario.store
    places = {f"task logs of the {run} run": text.encode() for run, text in scenario.logs.items()}
    for path in Path(airflow_db).rglob("*"):
        if path.is_file():
            places[str(path)] = path.read_bytes()  # the metadata DB with XCom and rendered fields, task logs
    places["store.db"] = (scenario.root / "store.db").read_bytes()
    bucket = scenario.conf["artifacts_root"].split("://", 1)[1].split("/", 1)[0]
    for key in store.keys(bucket):
        places[f"{bucket}/{key}"] = store.get(bucket, key)
    assert any(p.endswith("report.json") for p in places)
    assert "listed " in scenario.logs["first"], "the task logs were not captured"
    leaks = [place for place, data in places.items() for secret in store.secrets if secret.encode() in data]
    assert not leaks, leaks
