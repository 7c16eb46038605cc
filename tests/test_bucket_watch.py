"""The bucket-watch logic without Airflow: new-object detection on real folders, the quiet-period rule, config."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest

from lightly_tasks.bucket_watch import (
    MAX_MANIFEST_KEYS,
    Observation,
    SettleRule,
    SettleState,
    datapool_id,
    manifest,
    observe,
    unseen_objects,
)
from lightly_tasks.config import ConfigError
from lightly_tasks.demo_data import add_images
from lightly_tasks.storage import OBJECT_COLUMNS, list_objects, location_from_uri
from lightly_tasks.store import SELECTED_COLUMNS, DatasetStore, Lease, RunCommit
from lightly_tasks.watch_config import WATCH_CONFIG_ENV, load_watch_file, parse_watch_file, watch_file_path


def _objects(*keys: str, etag: str = "e") -> pd.DataFrame:
    return pd.DataFrame(
        {
            "key": list(keys),
            "size": [10] * len(keys),
            "etag": [f"{etag}-{k}" for k in keys],
            "last_modified": pd.to_datetime(["2026-01-01"] * len(keys), utc=True),
        },
        columns=OBJECT_COLUMNS,
    )


def _seen(store: DatasetStore, dataset: str, datasource: str, processed: pd.DataFrame) -> None:
    store.commit_run(
        RunCommit(
            dataset=dataset,
            datasource=datasource,
            run_id=f"seed-{len(processed)}",
            tag=f"seed-{len(processed)}",
            conf={},
            selected=pd.DataFrame(columns=list(SELECTED_COLUMNS)),
            processed=processed[["key", "etag"]],
            counts={},
            bytes_read=0,
            datasource_bytes=0,
        )
    )


def test_unseen_objects_are_new_keys_and_changed_etags() -> None:
    listed = _objects("a", "b", "c")
    seen = {"a": "e-a", "b": "old-etag"}
    assert unseen_objects(listed, seen)["key"].tolist() == ["b", "c"]
    assert unseen_objects(listed, {})["key"].tolist() == ["a", "b", "c"]


def test_observe_a_real_folder_against_the_datapool(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    old = add_images(folder, n_images=3, seed=1, subdir="old")
    location = location_from_uri(folder.as_uri())
    store = DatasetStore(f"sqlite:///{tmp_path / 'store.db'}")
    try:
        _seen(store, "ds", datapool_id(location), list_objects(location))
        new = add_images(folder, n_images=2, seed=2, subdir="new")
        (folder / "notes.txt").write_text("not an image")
        (folder / ".hidden.jpg").write_bytes((folder / old[0]).read_bytes())
        seen_by_other = observe(location, store, dataset="other")
        observation = observe(location, store, dataset="ds")
        # rewrite an old object: a changed etag makes it new again
        os.utime(folder / old[0], (1_000_000_000, 1_000_000_000))
        changed = observe(location, store, dataset="ds")
    finally:
        store.close()
    assert observation.n_listed == 5
    assert sorted(observation.new["key"]) == sorted(new)
    assert observation.lease is None
    assert sorted(seen_by_other.new["key"]) == sorted(old + new)  # the datapool is per dataset
    assert sorted(changed.new["key"]) == sorted([*new, old[0]])


def test_quiet_period_waits_for_the_upload_to_settle() -> None:
    state = SettleState(SettleRule(quiet_seconds=10, min_objects=1))
    assert state.update(Observation(_objects(), 0), now=0).reason == "no new objects"
    assert not state.update(Observation(_objects("a"), 1), now=1).ready
    assert not state.update(Observation(_objects("a", "b"), 2), now=5).ready  # changed: the clock restarts
    assert not state.update(Observation(_objects("a", "b"), 2), now=14).ready
    # an object rewritten in place (same key, new etag: a local file still being written) restarts it too
    assert not state.update(Observation(_objects("a", "b", etag="x"), 2), now=15).ready
    assert not state.update(Observation(_objects("a", "b", etag="x"), 2), now=24).ready
    decision = state.update(Observation(_objects("a", "b", etag="x"), 2), now=25)
    assert decision.ready and "2 new objects" in decision.reason


def test_min_objects_and_max_wait() -> None:
    state = SettleState(SettleRule(quiet_seconds=0, min_objects=3, max_wait_seconds=60))
    assert not state.update(Observation(_objects("a"), 1), now=0).ready
    assert "fewer than min_objects=3" in state.update(Observation(_objects("a", "b"), 2), now=30).reason
    assert state.update(Observation(_objects("a", "b"), 2), now=60).ready  # waited max_wait_seconds
    patient = SettleState(SettleRule(quiet_seconds=0, min_objects=3))
    assert not patient.update(Observation(_objects("a", "b"), 2), now=0).ready
    assert not patient.update(Observation(_objects("a", "b"), 2), now=10**6).ready
    assert patient.update(Observation(_objects("a", "b", "c"), 3), now=10**6 + 1).ready


def test_a_leased_dataset_never_fires_and_an_emptied_set_resets() -> None:
    state = SettleState(SettleRule(quiet_seconds=0))
    now = pd.Timestamp("2026-01-01", tz="UTC").to_pydatetime()
    lease = Lease(dataset="ds", holder="manual__run", acquired=now, expires=now)
    decision = state.update(Observation(_objects("a"), 1, lease=lease), now=100)
    assert not decision.ready and "manual__run" in decision.reason
    assert not state.update(Observation(_objects(), 1), now=101).ready  # the run put them in the datapool
    assert state.update(Observation(_objects("b"), 2), now=102).ready


def test_settle_rule_rejects_impossible_values() -> None:
    with pytest.raises(ValueError, match="quiet_seconds"):
        SettleRule(quiet_seconds=-1)
    with pytest.raises(ValueError, match="min_objects"):
        SettleRule(quiet_seconds=1, min_objects=0)
    with pytest.raises(ValueError, match="max_wait_seconds"):
        SettleRule(quiet_seconds=1, max_wait_seconds=0)


def test_manifest_counts_everything_but_caps_the_keys() -> None:
    keys = [f"k{i:05d}.jpg" for i in range(MAX_MANIFEST_KEYS + 5)]
    result = manifest(Observation(_objects(*reversed(keys)), 2000), dataset="ds", datasource="s3://b/p")
    assert result["n_objects"] == len(keys) and result["bytes"] == 10 * len(keys)
    assert result["keys"] == keys[:MAX_MANIFEST_KEYS] and result["keys_truncated"]
    assert json.loads(json.dumps(result)) == result
    small = manifest(Observation(_objects("b", "a"), 2), dataset="ds", datasource="s3://b/p")
    assert small["keys"] == ["a", "b"] and not small["keys_truncated"]
    assert small["fingerprint"] != result["fingerprint"]


def _conf(**extra: object) -> dict:
    return {"datasource": {"uri": "s3://bucket/raw"}, "dataset": "street", **extra}


def test_watch_file_defaults_and_names() -> None:
    parsed = parse_watch_file(
        {
            "watches": [
                {"conf": _conf()},
                {"name": "street-2", "quiet_seconds": 5, "min_objects": 3, "conf": _conf(
                    datasource={"uri": "s3://bucket/more"})},
            ]
        }
    )
    first, second = parsed.watches
    assert parsed.schedule == "*/5 * * * *"
    assert first.name == "street" and first.settings.quiet_seconds == 60 and first.settings.min_objects == 1
    assert second.name == "street-2" and second.settings.min_objects == 3
    assert first.conf == _conf() and first.config.datasource.conn_id == "aws_default"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "watch file: expected an object"),
        ({"watch": []}, "watch: unknown key"),
        ({"watches": [{}]}, "watches[0].conf: is required"),
        ({"watches": [{"conf": _conf(), "quiet_seconds": -1}]}, "watches[0].quiet_seconds: must be >= 0"),
        ({"watches": [{"conf": _conf(), "min_objects": "3"}]}, "watches[0].min_objects: expected an integer"),
        ({"watches": [{"conf": _conf(), "typo": 1}]}, "watches[0].typo: unknown key"),
        ({"watches": [{"conf": {"dataset": "x"}}]}, "watches[0].conf.datasource.uri: is required"),
        ({"watches": [{"conf": _conf(dataset="bad name")}]}, "watches[0].conf.dataset: must be"),
        (
            {"watches": [{"conf": _conf(datasource={"uri": "s3://b/p", "process_all": True})}]},
            "watches[0].conf.datasource.process_all",
        ),
        (
            {"watches": [{"conf": _conf(store_url="postgresql://u:hunter2@db/store")}]},
            "watches[0].conf.store_url: holds a password",
        ),
        ({"watches": [{"conf": _conf()}, {"conf": _conf()}]}, "watches[1].name: 'street' is used by watches[0]"),
        (
            {"watches": [{"conf": _conf()}, {"name": "again", "conf": _conf()}]},
            "watches[1].conf: dataset 'street' already watches s3://bucket/raw",
        ),
        ({"watches": [{"name": "a b", "conf": _conf()}]}, "watches[0].name: must be"),
        (
            {"watches": [{"conf": _conf(datasource={"uri": "s3://b/raw", "window": "data_interval"})}]},
            "watches[0].conf.datasource.window: a watch curates what just landed",
        ),
        (
            {"watches": [{"conf": _conf(datasource={"uri": "s3://b/raw/{{ ds_nodash }}/"})}]},
            "watches[0].conf.datasource.uri: a watch's conf cannot hold templates",
        ),
        (
            {"watches": [{"conf": _conf(selection_config={"strategies": [{"input": {"tag_name": "{{ conn }}"}}]})}]},
            "watches[0].conf.selection_config.strategies[0].input.tag_name: a watch's conf cannot hold templates",
        ),
    ],
)
def test_bad_watch_files_are_named(data: object, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_watch_file(data)
    assert message in str(raised.value)
    assert "hunter2" not in str(raised.value)


def test_a_watch_conf_is_filled_from_the_curation_defaults_as_its_runs_are() -> None:
    """LIGHTLY_CURATION_CONF fills a triggered run's Params; the watch (and its claim) read the same store."""
    defaults = {
        "store_url": "sqlite:////data/team-store.db",
        "input_type": "videos",
        "datasource": {"uri": "s3://default/raw", "conn_id": "team_s3"},
        "stopping_condition": {"n_samples": 50},
    }
    parsed = parse_watch_file({"watches": [{"conf": _conf()}]}, defaults=defaults)
    [watch] = parsed.watches
    assert watch.config.store_url == "sqlite:////data/team-store.db" and watch.config.input_type == "videos"
    assert watch.config.datasource.uri == "s3://bucket/raw" and watch.config.datasource.conn_id == "team_s3"
    assert watch.conf["stopping_condition"] == {"n_samples": 50}, "the conf the run is triggered with"
    assert watch.conf["datasource"] == {"uri": "s3://bucket/raw", "conn_id": "team_s3"}


def test_watch_file_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(WATCH_CONFIG_ENV, raising=False)
    monkeypatch.setenv("LIGHTLY_HOME", str(tmp_path))
    assert watch_file_path() is None and load_watch_file().watches == ()
    (tmp_path / "bucket_watch.json").write_text(json.dumps({"watches": [{"conf": _conf()}]}))
    assert [w.name for w in load_watch_file().watches] == ["street"]
    monkeypatch.setenv(WATCH_CONFIG_ENV, str(tmp_path / "missing.json"))
    with pytest.raises(ConfigError, match=r"missing\.json .* does not exist"):
        load_watch_file()
    (tmp_path / "broken.json").write_text("{not json")
    monkeypatch.setenv(WATCH_CONFIG_ENV, str(tmp_path / "broken.json"))
    with pytest.raises(ConfigError, match=r"broken\.json: not valid JSON"):
        load_watch_file()
