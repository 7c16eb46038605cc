"""Run outputs: embeddings.csv, filename lists, the dump of selected originals, report lookup and summary."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lightly_tasks import artifacts
from lightly_tasks.report import (
    build_report,
    dump_selected,
    embeddings_csv,
    format_summary,
    latest_report,
    write_filenames,
)
from lightly_tasks.storage import ByteCounter, location_from_uri


def test_embeddings_csv_is_lightlys_format_and_round_trips() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((4, 5)).astype(np.float32)
    vectors[0, 0] = 1e-12
    vectors[1, 1] = -123456.78
    keys = ["a.jpg", "sub dir/b,c.png", 'quote"d.jpg', "nature/été 2024/x.jpg"]
    body = embeddings_csv(keys, vectors)
    header = body.decode().splitlines()[0]
    assert header == "filenames,embedding_0,embedding_1,embedding_2,embedding_3,embedding_4,labels"
    frame = pd.read_csv(io.BytesIO(body))
    assert frame["filenames"].tolist() == keys
    assert frame["labels"].tolist() == [0, 0, 0, 0]
    got = frame[[f"embedding_{i}" for i in range(5)]].to_numpy(np.float64)
    np.testing.assert_allclose(got, vectors, rtol=1e-6, atol=1e-12)


def test_embeddings_csv_labels_and_empty() -> None:
    frame = pd.read_csv(io.BytesIO(embeddings_csv(["x", "y"], np.ones((2, 2), np.float32), labels=[3, 7])))
    assert frame["labels"].tolist() == [3, 7]
    assert embeddings_csv([], np.zeros((0, 512), np.float32)).decode() == "filenames,labels\n"
    with pytest.raises(ValueError):
        embeddings_csv(["x"], np.ones((2, 2), np.float32))


def test_write_filenames(tmp_path: Path) -> None:
    run = location_from_uri(tmp_path.as_uri())
    uri = write_filenames(run, "selected", ["b/x.jpg", "a b.png"])
    assert uri == (tmp_path / "filenames/selected_filenames.txt").as_uri()
    assert (tmp_path / "filenames/selected_filenames.txt").read_text() == "b/x.jpg\na b.png\n"
    write_filenames(run, "corrupt", [])
    assert (tmp_path / "filenames/corrupt_filenames.txt").read_text() == ""


@pytest.fixture
def source(tmp_path: Path) -> Path:
    folder = tmp_path / "source"
    (folder / "nested/dir").mkdir(parents=True)
    (folder / "top.jpg").write_bytes(b"\xff\xd8 top bytes")
    (folder / "nested/dir/deep name.png").write_bytes(b"\x89PNG deeper and longer bytes")
    (tmp_path / "outside.txt").write_bytes(b"secret next to the datasource")
    return folder


def test_dump_selected_copies_bytes_and_counts(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    counter = ByteCounter()
    keys = ["top.jpg", "nested/dir/deep name.png"]
    n = dump_selected(location_from_uri(source.as_uri()), location_from_uri(out.as_uri()), keys, counter)
    assert n == 2
    for key in keys:
        assert (out / key).read_bytes() == (source / key).read_bytes()
    assert counter.total == sum((source / k).stat().st_size for k in keys)


@pytest.mark.parametrize("bad", ["../outside.txt", "/etc/hostname", "a/../../outside.txt", "..", "./"])
def test_dump_refuses_escaping_keys_before_reading(source: Path, tmp_path: Path, bad: str) -> None:
    out = tmp_path / "out"
    counter = ByteCounter()
    with pytest.raises(ValueError, match="escape"):
        dump_selected(
            location_from_uri(source.as_uri()), location_from_uri(out.as_uri()), ["top.jpg", bad], counter
        )
    assert counter.total == 0
    assert not out.exists()


def _report(run_id: str, n_selected: int) -> dict:
    return build_report(
        dataset="cats",
        run_id=run_id,
        config={"dataset": "cats"},
        counts={
            "nListed": 10,
            "nSkippedSeen": 2,
            "nInput": 8,
            "nCorrupt": 1,
            "nDuplicate": 1,
            "nSelected": n_selected,
            "nDatasetAfter": n_selected,
        },
        stages={
            "corruptness": {"bytesRead": 1000, "seconds": 1.0},
            "upload": {"bytesRead": 250, "seconds": 0.1},
        },
        datasource_bytes=1000,
        outputs={"corrupt_filenames": "file:///r/filenames/corrupt_filenames.txt"},
        selection={"tag": "t"},
    )


def test_build_report_sums_traffic() -> None:
    report = _report("r1", 3)
    assert report["traffic"] == {"datasourceBytes": 1000, "bytesRead": 1250, "ratio": 1.25}
    empty = build_report(
        dataset="d", run_id="r", config={}, counts={}, stages={}, datasource_bytes=0, outputs={}, selection={}
    )
    assert empty["traffic"] == {"datasourceBytes": 0, "bytesRead": 0, "ratio": None}


def test_latest_report_picks_the_newest_and_summary_reads_it(tmp_path: Path) -> None:
    dataset = location_from_uri((tmp_path / "cats").as_uri())
    with pytest.raises(FileNotFoundError, match=r"no report\.json"):
        latest_report(dataset)
    old = artifacts.run_location(location_from_uri(tmp_path.as_uri()), "cats", "manual__z_old")
    new = artifacts.run_location(location_from_uri(tmp_path.as_uri()), "cats", "manual__a_new")
    artifacts.write_json(old, "report.json", _report("manual__z_old", 3))
    artifacts.write_json(new, "report.json", _report("manual__a_new", 5))
    os.utime(Path(old.root) / "report.json", (1_700_000_000, 1_700_000_000))
    uri, report = latest_report(dataset)
    assert uri == f"{new.uri}/report.json"
    assert report["runId"] == "manual__a_new"
    summary = format_summary(report, uri)
    assert "Curation run manual__a_new of dataset 'cats'" in summary
    assert "10 (2 already in the datapool, 8 processed)" in summary
    assert "selected            5 (dataset now 5 samples)" in summary
    assert "1,250 of 1,000 dataset bytes (1.25x)" in summary
    assert f"{new.uri}/filenames/selected_filenames.txt" in summary
    assert "selected copied to" not in summary
