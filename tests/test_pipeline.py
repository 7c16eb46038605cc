"""The curation stages called directly (no Airflow) on real demo images with a temporary SQLite store."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from lightly_tasks import artifacts, pipeline
from lightly_tasks.config import parse_config
from lightly_tasks.demo_data import add_images, build_demo_folder
from lightly_tasks.report import format_summary
from lightly_tasks.storage import DatasourceNotFoundError, location_from_uri

pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
RUN_ID = "manual__2026-11-25T13:00:00+00:00"
N_SAMPLES = 5


def _context(root: Path, images: Path, *, run_id: str = RUN_ID, **conf: Any) -> pipeline.RunContext:
    config = parse_config(
        {
            "datasource": {"uri": images.as_uri()},
            "dataset": "ds",
            "artifacts_root": (root / "artifacts").as_uri(),
            "store_url": f"sqlite:///{root / 'store.db'}",
            "embedding": {"image_size": 32},
            **conf,
        }
    )
    return pipeline.RunContext(
        config=config,
        run_id=run_id,
        datasource=location_from_uri(config.datasource.uri),
        artifacts=location_from_uri(config.artifacts_root),
    )


def _run_to_metadata(ctx: pipeline.RunContext) -> dict[str, Any]:
    listing = pipeline.list_stage(ctx)
    shards = pipeline.per_shard(listing)
    decoded = [pipeline.corruptness_stage(ctx, m["shard"], workers=2) for m in shards]
    embedded = [pipeline.embedding_stage(ctx, m["shard"]) for m in decoded]
    selection = pipeline.selection_stage(ctx, [m["shard"] for m in embedded])
    metadata = pipeline.metadata_stage(ctx)
    return {
        "listing": listing,
        "shards": shards,
        "decoded": decoded,
        "embedded": embedded,
        "selection": selection,
        "metadata": metadata,
    }


def _upload(ctx: pipeline.RunContext, m: dict[str, Any]) -> dict[str, Any]:
    return pipeline.upload_stage(
        ctx,
        listing=m["shards"][0],
        decoded=m["decoded"],
        embedded=m["embedded"],
        selection=m["selection"],
        metadata=m["metadata"],
    )


def _store_state(ctx: pipeline.RunContext) -> tuple[pd.DataFrame, dict[str, str], list[Any]]:
    store = ctx.store()
    try:
        return store.samples("ds"), store.seen_objects("ds", ctx.datasource_id), store.tags("ds")
    finally:
        store.close()


def _snapshot(ctx: pipeline.RunContext) -> dict[str, Any]:
    return {
        "decoded": artifacts.read_table(ctx.run, "corruptness/shard-00000.parquet"),
        "embedded": artifacts.read_embeddings(ctx.run, "embedding/shard-00000.parquet"),
        "selection": artifacts.read_table(ctx.run, "selection/objects.parquet"),
        "metadata": artifacts.read_table(ctx.run, "metadata/metadata.parquet"),
    }


@pytest.fixture(scope="module")
def first(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One run through every stage, with stage re-runs before upload and a repeated upload."""
    root = tmp_path_factory.mktemp("pipeline")
    images = root / "images"
    demo = build_demo_folder(images, n_images=6, seed=2)
    ctx = _context(root, images, num_shards=2, stopping_condition={"n_samples": N_SAMPLES})
    manifests = _run_to_metadata(ctx)
    before = _snapshot(ctx)
    stale = Path(ctx.run.root) / "cache/shard-00000/part-00099.npy"
    stale.write_bytes(b"left by an earlier attempt")
    rerun = {
        "decoded": pipeline.corruptness_stage(ctx, 0, workers=2),
        "embedded": pipeline.embedding_stage(ctx, 0),
        "selection": pipeline.selection_stage(ctx, [0, 1]),
        "metadata": pipeline.metadata_stage(ctx),
    }
    after = _snapshot(ctx)
    upload = _upload(ctx, manifests)
    state = _store_state(ctx)
    upload_again = _upload(ctx, manifests)
    state_again = _store_state(ctx)
    return {
        "root": root,
        "images": images,
        "demo": demo,
        "ctx": ctx,
        "m": manifests,
        "before": before,
        "after": after,
        "rerun": rerun,
        "stale": stale,
        "upload": upload,
        "upload_again": upload_again,
        "state": state,
        "state_again": state_again,
    }


def test_manifests_are_small_json(first) -> None:
    m = first["m"]
    manifests = [
        m["listing"],
        *m["shards"],
        *m["decoded"],
        *m["embedded"],
        m["selection"],
        m["metadata"],
        first["upload"],
        *first["rerun"].values(),
    ]
    for manifest in manifests:
        text = json.dumps(manifest)
        assert len(text) < 10_000, manifest.get("stage")
        assert json.loads(text) == manifest
        assert manifest["bytes_read"] >= 0 and manifest["seconds"] >= 0


def test_stage_counts_add_up(first) -> None:
    m, demo, images = first["m"], first["demo"], first["images"]
    n_objects = len(demo.all_keys())
    dataset_bytes = sum(p.stat().st_size for p in images.rglob("*") if p.is_file())
    listing = m["listing"]
    assert (listing["n_listed"], listing["n_seen"], listing["n_objects"]) == (n_objects, 0, n_objects)
    assert listing["shards"] == [0, 1] and [s["shard"] for s in m["shards"]] == [0, 1]
    assert listing["datasource_bytes"] == dataset_bytes
    decoded = m["decoded"]
    assert sum(d["n_objects"] for d in decoded) == n_objects
    assert all(d["n_objects"] > 0 for d in decoded)
    assert sum(d["n_corrupt"] for d in decoded) == len(demo.broken)
    assert sum(d["bytes_read"] for d in decoded) == dataset_bytes
    n_ok = sum(d["n_ok"] for d in decoded)
    assert [e["n_embedded"] for e in m["embedded"]] == [d["n_ok"] for d in decoded]
    assert {e["dim"] for e in m["embedded"]} == {512}
    assert all(e["bytes_read"] == 0 for e in m["embedded"])
    selection = m["selection"]
    assert selection["n_selected"] == N_SAMPLES and selection["stopped_by"] == "n_samples"
    assert selection["n_corrupt"] == len(demo.broken)
    assert selection["n_duplicate"] == len(demo.duplicates)
    assert selection["n_candidates"] == n_ok - len(demo.duplicates)
    assert m["metadata"]["n_samples"] == N_SAMPLES
    assert {"width", "height", "luminance", "sharpness"} <= set(m["metadata"]["fields"])


def test_selection_table(first) -> None:
    table = first["after"]["selection"].set_index("key")
    demo = first["demo"]
    assert set(table.index) == set(demo.all_keys())
    assert (table.loc[list(demo.broken), "status"] == "corrupt").all()
    duplicate, original = demo.duplicates[0]
    assert table.at[duplicate, "status"] == "duplicate"
    assert table.at[duplicate, "reason"] == f"exact duplicate of {original}"
    selected = table[table["status"] == "selected"].sort_values("order")
    assert selected["order"].tolist() == list(range(N_SAMPLES))
    assert selected["content_hash"].is_unique
    distances = selected["distance"].to_numpy()
    assert np.isinf(distances[0]) and np.all(np.diff(distances[1:]) <= 1e-6)
    metadata = first["after"]["metadata"]
    assert metadata["key"].tolist() == selected.index.tolist()


def test_rerunning_a_stage_overwrites_with_the_same_result(first) -> None:
    before, after = first["before"], first["after"]
    assert not first["stale"].exists()
    pd.testing.assert_frame_equal(after["decoded"], before["decoded"])
    assert after["embedded"][0] == before["embedded"][0]
    np.testing.assert_array_equal(after["embedded"][1], before["embedded"][1])
    pd.testing.assert_frame_equal(after["selection"], before["selection"])
    pd.testing.assert_frame_equal(after["metadata"], before["metadata"])
    rerun, m = first["rerun"], first["m"]
    assert rerun["decoded"]["n_corrupt"] == m["decoded"][0]["n_corrupt"]
    assert rerun["selection"]["n_selected"] == m["selection"]["n_selected"]


def test_upload_commits_samples_tag_datapool_and_report(first) -> None:
    upload, ctx, demo = first["upload"], first["ctx"], first["demo"]
    assert upload["committed"] is True
    samples, seen, tags = first["state"]
    assert len(samples) == N_SAMPLES
    assert [t.name for t in tags] == [ctx.tag] and tags[0].n_samples == N_SAMPLES
    assert set(seen) == set(demo.all_keys())
    assert upload["counts"]["nSelected"] == N_SAMPLES and upload["counts"]["nDatasetAfter"] == N_SAMPLES
    run = Path(ctx.run.root)
    report = json.loads((run / "report.json").read_text())
    assert report["datasetSizes"]["nCorrupt"] == len(demo.broken)
    assert report["traffic"]["bytesRead"] == report["traffic"]["datasourceBytes"]
    assert "secret" not in json.dumps(report["config"])
    selected = (run / "filenames/selected_filenames.txt").read_text().splitlines()
    assert selected == samples["key"].tolist()
    assert set((run / "filenames/corrupt_filenames.txt").read_text().splitlines()) == set(demo.broken)
    assert (run / "filenames/duplicate_filenames.txt").read_text().splitlines() == [demo.duplicates[0][0]]
    frame = pd.read_csv(run / "data/embeddings.csv")
    assert frame["filenames"].tolist() == selected and frame.shape[1] == 512 + 2
    assert not (run / "cache").exists()


def test_repeated_upload_changes_nothing(first) -> None:
    assert first["upload_again"]["committed"] is False
    samples, seen, tags = first["state"]
    samples_again, seen_again, tags_again = first["state_again"]
    pd.testing.assert_frame_equal(samples_again, samples)
    assert seen_again == seen
    assert tags_again == tags
    assert first["upload_again"]["counts"] == first["upload"]["counts"]


def test_empty_datasource_selects_nothing_and_reports_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    ctx = _context(tmp_path, images)
    with caplog.at_level(logging.WARNING, logger="lightly_tasks.pipeline"):
        m = _run_to_metadata(ctx)
        upload = _upload(ctx, m)
    assert m["listing"]["n_listed"] == 0 and m["shards"] == [{**m["shards"][0], "shard": 0}]
    assert m["selection"]["n_selected"] == 0
    assert upload["committed"] is True
    assert any("holds no images" in r.getMessage() for r in caplog.records)
    report = json.loads(Path(ctx.run.path("report.json")).read_text())
    assert report["datasetSizes"]["nListed"] == 0 and report["datasetSizes"]["nSelected"] == 0
    assert Path(ctx.run.path("filenames/selected_filenames.txt")).read_text() == ""
    assert "selected            0 (dataset now 0 samples)" in format_summary(report, upload["report_uri"])


def test_more_samples_asked_than_candidates_selects_all_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    images = tmp_path / "images"
    keys = add_images(images, n_images=3, seed=4)
    ctx = _context(tmp_path, images, stopping_condition={"n_samples": 50})
    with caplog.at_level(logging.WARNING, logger="lightly_tasks.pipeline"):
        m = _run_to_metadata(ctx)
    assert m["selection"]["n_selected"] == 3 and m["selection"]["stopped_by"] == "exhausted"
    table = artifacts.read_table(ctx.run, "selection/objects.parquet")
    assert sorted(table.loc[table["status"] == "selected", "key"]) == sorted(keys)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("n_samples=50 but only 3 candidates" in w for w in warnings), warnings


def test_missing_datasource_is_named(tmp_path: Path) -> None:
    images = tmp_path / "no such folder"
    ctx = _context(tmp_path, images)
    with pytest.raises(DatasourceNotFoundError) as raised:
        pipeline.list_stage(ctx)
    assert images.as_uri() in str(raised.value)
    assert not Path(ctx.run.root).exists()


def test_keeping_duplicates_and_cache(tmp_path: Path) -> None:
    images = tmp_path / "images"
    keys = add_images(images, n_images=3, seed=9)
    shutil.copyfile(images / keys[0], images / "batch2/twin.jpg")
    ctx = _context(
        tmp_path, images, remove_exact_duplicates=False, keep_cache=True, stopping_condition={"n_samples": 10}
    )
    m = _run_to_metadata(ctx)
    assert m["selection"]["n_duplicate"] == 0 and m["selection"]["n_candidates"] == 4
    table = artifacts.read_table(ctx.run, "selection/objects.parquet").set_index("key")
    assert table.at["batch2/twin.jpg", "status"] == "selected"
    assert table.at[keys[0], "status"] == "selected"
    _upload(ctx, m)
    cache = Path(ctx.run.path("cache/shard-00000"))
    assert [np.load(p).shape[0] for p in sorted(cache.glob("part-*.npy"))] == [4]
