"""Backfill of history window by window: ``datasource.window: data_interval`` and date-templated prefixes.

The DAG part runs ``lightly_curation`` in-process with ``dag.test(logical_date=...)`` over three daily windows
of a local folder whose files have set modification times, then re-runs one window, then runs once without a
window. ``dag.test()`` infers a manual run's data interval from the DAG's timetable the way Airflow does: for
the daily timetable, ``logical_date`` 03-02 00:00 gives the interval [03-01, 03-02), so each window is run with
the day after it. The real ``airflow backfill create`` CLI is checked in tests/test_airflow_services.py.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pendulum
import pytest

from lightly_tasks.artifacts import safe_run_id
from lightly_tasks.demo_data import add_images
from lightly_tasks.storage import location_from_uri
from lightly_tasks.store import DatasetStore
from lightly_tasks.windows import RunWindow, WindowError, list_window, render_prefix, split_template
from tests.airflow_dags import load_dag

DAYS = [datetime(2026, 3, d, tzinfo=UTC) for d in (1, 2, 3)]
PER_DAY = 3


def _set_mtime(path: Path, when: datetime) -> None:
    os.utime(path, (when.timestamp(), when.timestamp()))


def _tag_keys(store: DatasetStore, run_id: str) -> set[str]:
    samples = store.samples("hist")
    tag = f"selected_{safe_run_id(run_id)}"
    return {key for key, tags in zip(samples["key"], samples["tags"], strict=True) if tag in tags}


@pytest.fixture(scope="module")
def backfill(tmp_path_factory, airflow_db) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("backfill")
    images = root / "images"
    by_day: dict[datetime, set[str]] = {}
    for i, day in enumerate(DAYS):
        keys = add_images(images, n_images=PER_DAY, seed=i, subdir=f"cam{i}")
        for j, key in enumerate(keys):
            # one object exactly at the window's start (inside), the others later that day
            _set_mtime(images / key, day + timedelta(hours=0 if j == 0 else 6 * j))
        by_day[day] = set(keys)
    # older history outside every window, and an object exactly at the last window's end (outside it)
    before = add_images(images, n_images=2, seed=9, subdir="older")
    _set_mtime(images / before[0], DAYS[0] - timedelta(days=10))
    _set_mtime(images / before[1], DAYS[-1] + timedelta(days=1))
    conf = {
        "datasource": {"uri": images.as_uri(), "window": "data_interval"},
        "dataset": "hist",
        "stopping_condition": {"n_samples": 50},
        "artifacts_root": (root / "artifacts").as_uri(),
        "store_url": f"sqlite:///{root / 'store.db'}",
        "embedding": {"image_size": 32},
        "num_shards": 1,
    }
    dag = load_dag("lightly_curation")
    runs = [dag.test(logical_date=day + timedelta(days=1), run_conf=conf) for day in DAYS]
    store = DatasetStore(conf["store_url"])
    pool_after_windows = store.seen_objects("hist", images.as_uri())
    rerun = dag.test(logical_date=DAYS[1] + timedelta(days=1), run_conf=conf)
    pool_after_rerun = store.seen_objects("hist", images.as_uri())
    whole = dag.test(run_conf={**conf, "datasource": {"uri": images.as_uri()}})
    result = {
        "root": root,
        "images": images,
        "by_day": by_day,
        "outside": set(before),
        "runs": runs,
        "rerun": rerun,
        "whole": whole,
        "tags": [_tag_keys(store, r.run_id) for r in runs],
        "rerun_tag": _tag_keys(store, rerun.run_id),
        "whole_tag": _tag_keys(store, whole.run_id),
        "pool_after_windows": pool_after_windows,
        "pool_after_rerun": pool_after_rerun,
        "pool_after_whole": store.seen_objects("hist", images.as_uri()),
        "runs_in_store": {r.run_id: store.run("hist", r.run_id) for r in [*runs, rerun, whole]},
    }
    store.close()
    return result


def _report(backfill: dict[str, Any], run_id: str) -> dict[str, Any]:
    import json

    path = backfill["root"] / "artifacts" / "hist" / "runs" / safe_run_id(run_id) / "report.json"
    return json.loads(path.read_text())


@pytest.mark.dag
def test_three_daily_windows_give_three_runs_whose_tags_partition_the_objects(backfill):
    assert [r.state for r in backfill["runs"]] == ["success"] * 3
    assert [r.data_interval_start for r in backfill["runs"]] == DAYS
    assert [r.data_interval_end for r in backfill["runs"]] == [d + timedelta(days=1) for d in DAYS]
    for tag_keys, day in zip(backfill["tags"], DAYS, strict=True):
        assert tag_keys == backfill["by_day"][day]
    assert len(set().union(*backfill["tags"])) == sum(len(t) for t in backfill["tags"]) == 3 * PER_DAY
    assert set(backfill["pool_after_windows"]) == set().union(*backfill["by_day"].values())
    assert not backfill["outside"] & set(backfill["pool_after_windows"])
    for run in backfill["runs"]:
        sizes = _report(backfill, run.run_id)["datasetSizes"]
        assert (sizes["nInput"], sizes["nSkippedSeen"], sizes["nSelected"]) == (PER_DAY, 0, PER_DAY)


@pytest.mark.dag
def test_rerun_of_a_window_processes_nothing(backfill):
    rerun = backfill["rerun"]
    assert rerun.state == "success"
    assert rerun.run_id not in {r.run_id for r in backfill["runs"]}
    sizes = _report(backfill, rerun.run_id)["datasetSizes"]
    assert (sizes["nListed"], sizes["nSkippedSeen"], sizes["nInput"], sizes["nSelected"]) == (PER_DAY, PER_DAY, 0, 0)
    assert backfill["rerun_tag"] == set()
    assert backfill["pool_after_rerun"] == backfill["pool_after_windows"]


@pytest.mark.dag
def test_run_overlapping_every_window_processes_only_what_no_window_held(backfill):
    whole = backfill["whole"]
    assert whole.state == "success"
    sizes = _report(backfill, whole.run_id)["datasetSizes"]
    assert sizes["nSkippedSeen"] == 3 * PER_DAY
    assert sizes["nInput"] == len(backfill["outside"])
    assert backfill["whole_tag"] == backfill["outside"]
    assert set(backfill["pool_after_whole"]) == set().union(*backfill["by_day"].values(), backfill["outside"])
    every_tag = [*backfill["tags"], backfill["rerun_tag"], backfill["whole_tag"]]
    assert sum(len(t) for t in every_tag) == len(set().union(*every_tag))  # no object selected twice
    assert all(info is not None for info in backfill["runs_in_store"].values())


# ---- list_window on its own: local folder and templates ----


def test_split_template_roots_the_uri_before_the_templated_segment():
    assert split_template("s3://b/raw/{{ ds_nodash }}/") == ("s3://b/raw", "{{ ds_nodash }}/")
    assert split_template("s3://b/raw/day={{ ds }}/cam1") == ("s3://b/raw", "day={{ ds }}/cam1")
    assert split_template("file:///data/images") == ("file:///data/images", "")


def test_render_prefix_uses_the_data_interval_and_rejects_what_it_cannot_render():
    window = RunWindow(start=pendulum.datetime(2026, 3, 1, tz="UTC"), end=pendulum.datetime(2026, 3, 2, tz="UTC"))
    assert render_prefix("{{ ds_nodash }}/", window) == "20260301"
    assert render_prefix("{{ data_interval_start.strftime('%Y/%m/%d') }}", window) == "2026/03/01"
    assert render_prefix("day={{ ds }}/cam1", window) == "day=2026-03-01/cam1"
    with pytest.raises(WindowError, match="needs a run with a data interval"):
        render_prefix("{{ ds }}", RunWindow())
    with pytest.raises(WindowError, match=r"'nope' is undefined.*available: ds, ds_nodash"):
        render_prefix("{{ nope }}", window)
    with pytest.raises(WindowError, match="escape"):
        render_prefix("../{{ ds }}", window)
    with pytest.raises(WindowError, match="empty folder"):
        render_prefix("{{ '' }}", window)


def test_config_rejects_misplaced_or_broken_templates():
    from lightly_tasks.config import ConfigError, parse_config

    base = {"dataset": "d", "stopping_condition": {"n_samples": 1}}
    for uri, message in [
        ("s3://{{ ds }}/raw", "must come after the bucket"),
        ("s3://b/{{ ds ", "not valid Jinja"),
        ("s3://b/raw/{{ 'a' * 10**11 }}/", "Mul is not allowed"),  # would render 100 GB in the worker
        ("s3://b/raw/{{ ds | replace('', ds) | replace('', ds) }}/", "Filter is not allowed"),
        ("s3://b/raw/{{ lipsum(10) }}/", "Call is not allowed"),
        ("s3://b/raw/{{ ds.__class__ }}/", "Getattr is not allowed"),
    ]:
        with pytest.raises(ConfigError, match=f"datasource.uri: .*{message}"):
            parse_config({**base, "datasource": {"uri": uri}})
    with pytest.raises(ConfigError, match=r"datasource\.window: must be one of none, data_interval"):
        parse_config({**base, "datasource": {"uri": "s3://b/p", "window": "daily"}})
    parsed = parse_config({**base, "datasource": {"uri": "s3://b/raw/{{ ds_nodash }}/", "window": "data_interval"}})
    assert parsed.datasource.window == "data_interval"
    for fine in ("{{ data_interval_start.strftime('%Y/%m/%d') }}", "{{ ds_nodash[:6] }}/{{ ds | upper }}"):
        assert parse_config({**base, "datasource": {"uri": f"s3://b/raw/{fine}/"}}).datasource.uri.endswith("/")


def test_data_interval_mode_without_an_interval_is_a_clear_error(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    with pytest.raises(WindowError, match=r"datasource\.window: 'data_interval' needs a run with a data interval"):
        list_window(
            location_from_uri(tmp_path.as_uri()), tmp_path.as_uri(), mode="data_interval", window=RunWindow(),
            extensions={".png"},
        )


def test_templated_folder_missing_is_an_empty_window_but_a_missing_root_is_an_error(tmp_path):
    from lightly_tasks.storage import DatasourceNotFoundError

    window = RunWindow(start=datetime(2026, 3, 1, tzinfo=UTC), end=datetime(2026, 3, 2, tzinfo=UTC))
    (tmp_path / "raw" / "20260228").mkdir(parents=True)
    (tmp_path / "raw" / "20260228" / "a.png").write_bytes(b"x")
    uri = (tmp_path / "raw").as_uri() + "/{{ ds_nodash }}/"
    listing = list_window(location_from_uri((tmp_path / "raw").as_uri()), uri, mode="none", window=window,
                          extensions={".png"})
    assert listing.objects.empty and listing.folder == "20260301"
    missing = (tmp_path / "gone").as_uri()
    with pytest.raises(DatasourceNotFoundError):
        list_window(location_from_uri(missing), missing + "/{{ ds_nodash }}", mode="none", window=window,
                    extensions={".png"})


# ---- date-organised bucket on the S3 emulator ----


def test_date_prefixes_on_s3_list_only_the_window_folder_with_keys_relative_to_the_root(s3):
    from lightly_airflow.context import location_for

    bucket = s3.new_bucket("dated")
    client = s3.client()
    for day in ("20260301", "20260302", "20260303"):
        for name in ("a.jpg", "b.png", "notes.txt"):
            client.put_object(Bucket=bucket, Key=f"raw/{day}/{name}", Body=b"x")
    client.put_object(Bucket=bucket, Key="raw/2026030/c.jpg", Body=b"x")  # a prefix of a day, not that day
    uri = f"s3://{bucket}/raw/{{{{ ds_nodash }}}}/"
    root_uri, _ = split_template(uri)
    root = location_for(root_uri, "aws_default")
    seen: list[set[str]] = []
    for day in (1, 2, 3):
        window = RunWindow(start=datetime(2026, 3, day, tzinfo=UTC), end=datetime(2026, 3, day + 1, tzinfo=UTC))
        listing = list_window(root, uri, mode="none", window=window, extensions={".jpg", ".png"})
        seen.append(set(listing.objects["key"]))
        assert seen[-1] == {f"2026030{day}/a.jpg", f"2026030{day}/b.png"}
    assert len(set().union(*seen)) == 6
    # combined with the data interval: S3 objects were all written just now, so a past interval holds none
    window = RunWindow(start=datetime(2026, 3, 1, tzinfo=UTC), end=datetime(2026, 3, 2, tzinfo=UTC))
    past = list_window(root, uri, mode="data_interval", window=window, extensions={".jpg", ".png"})
    assert past.objects.empty and past.n_outside == 2
    now = datetime.now(UTC)
    current = RunWindow(start=now - timedelta(hours=1), end=now + timedelta(hours=1))
    day_uri = f"s3://{bucket}/raw/20260301"
    plain_now = list_window(location_for(day_uri, "aws_default"), day_uri, mode="data_interval", window=current,
                            extensions={".jpg"})
    assert set(plain_now.objects["key"]) == {"a.jpg"}
