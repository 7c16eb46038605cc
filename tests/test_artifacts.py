"""Artifact files on a local fsspec location: tables, JSON, bytes, arrays, embeddings, run paths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from lightly_tasks import artifacts
from lightly_tasks.storage import Location, location_from_uri


@pytest.fixture
def loc(tmp_path: Path) -> Location:
    return location_from_uri(tmp_path.as_uri())


def test_write_bytes_creates_folders_overwrites_and_returns_uri(loc: Location, tmp_path: Path) -> None:
    uri = artifacts.write_bytes(loc, "a/b/c.bin", b"first")
    assert uri == (tmp_path / "a/b/c.bin").as_uri()
    artifacts.write_bytes(loc, "a/b/c.bin", b"2nd")
    assert (tmp_path / "a/b/c.bin").read_bytes() == b"2nd"


def test_json_round_trip(loc: Location) -> None:
    doc = {"name": "été", "n": 3, "nested": {"xs": [1.5, None, True]}}
    artifacts.write_json(loc, "r/report.json", doc)
    assert artifacts.read_json(loc, "r/report.json") == doc


def test_table_round_trip(loc: Location) -> None:
    frame = pd.DataFrame(
        {
            "key": ["a.jpg", "sub/b.png", "nature/été 2024/c.jpg"],
            "size": np.array([1, 2**40, 0], dtype="int64"),
            "reason": [None, "truncated", None],
            "luminance": [0.5, np.nan, 1.0],
            "last_modified": pd.to_datetime(["2026-01-01", "2026-02-01", "2026-03-01"], utc=True),
        }
    )
    uri = artifacts.write_table(loc, "t/objects.parquet", frame)
    assert uri.endswith("/t/objects.parquet")
    back = artifacts.read_table(loc, "t/objects.parquet")
    pd.testing.assert_frame_equal(back, frame, check_dtype=False)
    assert back["size"].dtype == np.int64
    assert back["last_modified"].dt.tz is not None


def test_table_drops_the_pandas_index(loc: Location) -> None:
    frame = pd.DataFrame({"key": ["x", "y"]}, index=[7, 9])
    artifacts.write_table(loc, "t.parquet", frame)
    back = artifacts.read_table(loc, "t.parquet")
    assert list(back.columns) == ["key"] and list(back.index) == [0, 1]


@pytest.mark.parametrize("shape", [(5, 512), (1, 3), (0, 512), (0, 0)])
def test_embeddings_round_trip_exactly(loc: Location, shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal(shape).astype(np.float32)
    keys = [f"k{i}.jpg" for i in range(shape[0])]
    artifacts.write_table(loc, "e.parquet", artifacts.embeddings_table(keys, vectors))
    back_keys, back = artifacts.read_embeddings(loc, "e.parquet")
    assert back_keys == keys
    assert back.dtype == np.float32
    assert back.shape == shape
    np.testing.assert_array_equal(back, vectors)


def test_embeddings_table_is_a_fixed_size_float32_list() -> None:
    table = artifacts.embeddings_table(["a", "b"], np.ones((2, 4), np.float64))
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 4)
    assert table.num_rows == 2


def test_array_round_trip(loc: Location) -> None:
    array = np.arange(2 * 8 * 8 * 3, dtype=np.uint8).reshape(2, 8, 8, 3)
    artifacts.write_array(loc, "cache/part-00000.npy", array)
    back = artifacts.read_array(loc, "cache/part-00000.npy")
    assert back.dtype == np.uint8 and back.shape == (2, 8, 8, 3)
    np.testing.assert_array_equal(back, array)


def test_array_refuses_objects(loc: Location) -> None:
    with pytest.raises(ValueError):
        artifacts.write_array(loc, "x.npy", np.array([{"a": 1}], dtype=object))


@pytest.mark.parametrize(
    ("run_id", "expected"),
    [
        ("manual__2026-11-25T13:00:00+00:00", "manual__2026-11-25T13_00_00_00_00"),
        ("scheduled__2026-01-01T00:00:00+00:00", "scheduled__2026-01-01T00_00_00_00_00"),
        ("backfill__2026-01-01T00:00:00.123456+00:00", "backfill__2026-01-01T00_00_00.123456_00_00"),
        ("asset_triggered__2026-01-01T00:00:00+00:00", "asset_triggered__2026-01-01T00_00_00_00_00"),
        ("../../etc/passwd", "etc_passwd"),
        ("...", "run"),
        ("", "run"),
    ],
)
def test_safe_run_id(run_id: str, expected: str) -> None:
    safe = artifacts.safe_run_id(run_id)
    assert safe == expected
    assert "/" not in safe and safe not in (".", "..")


def test_run_location_layout(loc: Location, tmp_path: Path) -> None:
    run = artifacts.run_location(loc, "cats", "manual__2026-11-25T13:00:00+00:00")
    artifacts.write_json(run, "report.json", {})
    assert (tmp_path / "cats/runs/manual__2026-11-25T13_00_00_00_00/report.json").is_file()
    assert run.uri == f"{tmp_path.as_uri()}/cats/runs/manual__2026-11-25T13_00_00_00_00"


def test_remove_is_idempotent(loc: Location, tmp_path: Path) -> None:
    artifacts.write_bytes(loc, "cache/shard-00000/part-00000.npy", b"x")
    artifacts.write_bytes(loc, "keep.txt", b"y")
    artifacts.remove(loc, "cache")
    assert not (tmp_path / "cache").exists()
    artifacts.remove(loc, "cache")
    artifacts.remove(loc, "never/was/here")
    artifacts.remove(loc, "keep.txt")
    assert not (tmp_path / "keep.txt").exists()
