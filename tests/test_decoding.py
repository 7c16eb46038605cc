"""The one decoding pass over real demo images: verdicts, cache parts, byte accounting, ordered_map."""

from __future__ import annotations

import io
import logging
import random
import re
import shutil
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fsspec.implementations.local import LocalFileSystem
from PIL import Image

from lightly_tasks import decoding
from lightly_tasks.corruptness import check_image
from lightly_tasks.demo_data import DemoManifest, build_demo_folder, source_image
from lightly_tasks.metadata import image_metadata
from lightly_tasks.progress import Progress
from lightly_tasks.storage import ByteCounter, Location, list_objects, location_from_uri

SIZE = 32
pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")


class CountingFileSystem(LocalFileSystem):
    """A local filesystem that counts how often each path is opened for reading (``cat_file`` opens too)."""

    cachable = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.reads: Counter[str] = Counter()
        self._lock = threading.Lock()

    def _count(self, path: str) -> None:
        with self._lock:
            self.reads[self._strip_protocol(path)] += 1

    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        if "r" in mode:
            self._count(path)
        return super()._open(path, mode=mode, **kwargs)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DemoManifest]:
    folder = tmp_path_factory.mktemp("demo")
    return folder, build_demo_folder(folder, n_images=6, seed=5)


def _decode(
    source: Location, cache_dir: Path, objects: pd.DataFrame | None = None, **kwargs: Any
) -> tuple[pd.DataFrame, ByteCounter, Location]:
    objects = list_objects(source) if objects is None else objects
    cache = location_from_uri(cache_dir.as_uri())
    counter = ByteCounter()
    table = decoding.decode_shard(source, objects, cache, image_size=SIZE, counter=counter, **kwargs)
    return table, counter, cache


@pytest.fixture(scope="module")
def decoded(demo, tmp_path_factory) -> dict[str, Any]:
    folder, _ = demo
    fs = CountingFileSystem()
    source = Location(fs=fs, root=str(folder), uri=folder.as_uri())
    objects = list_objects(source)
    fs.reads.clear()
    table, counter, cache = _decode(source, tmp_path_factory.mktemp("cache"), objects, workers=3)
    return {"table": table, "objects": objects, "counter": counter, "cache": cache, "reads": dict(fs.reads)}


def test_one_row_per_object_in_listing_order(decoded, demo) -> None:
    table, objects = decoded["table"], decoded["objects"]
    assert table["key"].tolist() == objects["key"].tolist() == demo[1].all_keys()
    assert table["key"].is_unique
    for column in (
        "size",
        "etag",
        "last_modified",
        "verdict",
        "reason",
        "content_hash",
        "cache_part",
        "cache_row",
    ):
        assert column in table.columns, column


def test_verdicts_match_the_demo_manifest(decoded, demo) -> None:
    _, manifest = demo
    table = decoded["table"].set_index("key")
    for key, prefix in manifest.broken.items():
        assert table.at[key, "verdict"] == "corrupt", key
        assert table.at[key, "reason"].startswith(prefix), (key, table.at[key, "reason"])
        assert table.at[key, "cache_part"] == -1 and table.at[key, "cache_row"] == -1
    good = [*manifest.real, *(dup for dup, _ in manifest.duplicates), *manifest.convertible]
    for key in good:
        assert table.at[key, "verdict"] == "ok", (key, table.at[key, "reason"])
        assert table.at[key, "reason"] is None or pd.isna(table.at[key, "reason"])
        assert table.at[key, "cache_part"] >= 0 and table.at[key, "cache_row"] >= 0
        assert table.at[key, "width"] > 0 and table.at[key, "height"] > 0
    duplicate, original = manifest.duplicates[0]
    assert table.at[duplicate, "content_hash"] == table.at[original, "content_hash"]
    assert table.loc[manifest.real, "content_hash"].is_unique


def test_cache_parts_hold_every_ok_thumbnail(decoded, demo) -> None:
    table, cache = decoded["table"], decoded["cache"]
    ok = table[table["verdict"] == "ok"]
    parts = sorted(Path(cache.root).iterdir())
    assert [p.name for p in parts] == ["part-00000.npy"]
    part = np.load(parts[0])
    assert part.shape == (len(ok), SIZE, SIZE, 3) and part.dtype == np.uint8
    assert ok["cache_row"].tolist() == list(range(len(ok)))
    folder = demo[0]
    for row in ok.itertuples():
        expected = decoding.decode_object((folder / row.key).read_bytes(), image_size=SIZE).thumbnail
        np.testing.assert_array_equal(part[row.cache_row], expected, err_msg=row.key)


def test_iter_cache_yields_the_ok_rows_in_table_order(decoded, demo) -> None:
    table, cache = decoded["table"], decoded["cache"]
    got = np.concatenate(list(decoding.iter_cache(cache, table)))
    ok_keys = table.loc[table["verdict"] == "ok", "key"]
    expected = np.stack(
        [decoding.decode_object((demo[0] / k).read_bytes(), image_size=SIZE).thumbnail for k in ok_keys]
    )
    np.testing.assert_array_equal(got, expected)


def test_bytes_counted_equal_the_dataset_and_each_object_is_read_once(decoded, demo) -> None:
    folder, _ = demo
    sizes = {p.relative_to(folder).as_posix(): p.stat().st_size for p in folder.rglob("*") if p.is_file()}
    assert decoded["counter"].total == sum(sizes.values())
    assert decoded["table"]["size"].sum() == sum(sizes.values())
    reads = {Path(p).relative_to(folder).as_posix(): n for p, n in decoded["reads"].items()}
    for key, size in sizes.items():
        assert reads.get(key, 0) == (1 if size else 0), key


def test_object_vanished_after_listing_is_missing(demo, tmp_path: Path) -> None:
    folder = tmp_path / "images"
    shutil.copytree(demo[0], folder)
    source = location_from_uri(folder.as_uri())
    objects = list_objects(source)
    gone = demo[1].real[2]
    (folder / gone).unlink()
    table, counter, _ = _decode(source, tmp_path / "cache", objects)
    row = table.set_index("key").loc[gone]
    assert row["verdict"] == "corrupt"
    assert row["reason"].startswith("missing:")
    assert row["cache_part"] == -1
    assert counter.total == objects.loc[objects["key"] != gone, "size"].sum()
    assert (table["verdict"] == "ok").sum() == len(demo[1].all_keys()) - len(demo[1].broken) - 1


def test_cache_part_boundaries(decoded, demo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decoding, "CACHE_PART_SIZE", 4)
    source = location_from_uri(demo[0].as_uri())
    table, _, cache = _decode(source, tmp_path / "cache")
    ok = table[table["verdict"] == "ok"]
    n_ok = len(ok)
    assert n_ok > 8
    part_sizes = [np.load(p).shape[0] for p in sorted(Path(cache.root).iterdir())]
    assert part_sizes == [4] * (n_ok // 4) + ([n_ok % 4] if n_ok % 4 else [])
    positions = list(zip(ok["cache_part"], ok["cache_row"], strict=True))
    assert positions == [(i // 4, i % 4) for i in range(n_ok)]
    parts = list(decoding.iter_cache(cache, table))
    assert [len(p) for p in parts] == part_sizes
    single = decoded["table"]
    np.testing.assert_array_equal(
        np.concatenate(parts), np.concatenate(list(decoding.iter_cache(decoded["cache"], single)))
    )


def test_empty_shard_gives_an_empty_table_and_no_cache(tmp_path: Path) -> None:
    source = location_from_uri(tmp_path.as_uri())
    objects = pd.DataFrame({"key": pd.Series([], dtype=object), "size": pd.Series([], dtype="int64")})
    table, counter, cache = _decode(source, tmp_path / "cache", objects)
    assert len(table) == 0 and "verdict" in table.columns
    assert counter.total == 0
    assert not Path(cache.root).exists()
    assert list(decoding.iter_cache(cache, table)) == []


def test_oversized_objects_are_not_read(demo, tmp_path: Path) -> None:
    source = location_from_uri(demo[0].as_uri())
    objects = list_objects(source)
    limit = int(objects["size"].median())
    table, counter, _ = _decode(source, tmp_path / "cache", objects, max_object_bytes=limit)
    big = table["size"] > limit
    assert big.any()
    assert table.loc[big, "reason"].str.startswith("too large:").all()
    assert counter.total == table.loc[~big, "size"].sum()


def test_ordered_map_keeps_input_order() -> None:
    rng = random.Random(0)
    delays = [rng.random() * 0.01 for _ in range(40)]

    def slow_square(i: int) -> int:
        time.sleep(delays[i])
        return i * i

    assert list(decoding.ordered_map(slow_square, range(40), workers=4, window=8)) == [
        i * i for i in range(40)
    ]


def test_ordered_map_bounds_work_in_flight() -> None:
    pulled = 0
    window = 5

    def items():
        nonlocal pulled
        for i in range(50):
            pulled += 1
            yield i

    consumed = 0
    max_ahead = 0
    for result in decoding.ordered_map(lambda i: i, items(), workers=3, window=window):
        assert result == consumed
        consumed += 1
        max_ahead = max(max_ahead, pulled - consumed)
        time.sleep(0.001)
    assert consumed == 50
    assert 0 < max_ahead <= window


def test_ordered_map_raises_the_first_error_in_order() -> None:
    def fail_at_3(i: int) -> int:
        if i == 3:
            raise KeyError(i)
        return i

    got = []
    with pytest.raises(KeyError):
        for value in decoding.ordered_map(fail_at_3, range(10), workers=2, window=4):
            got.append(value)
    assert got == [0, 1, 2]


def test_progress_logs_rate_and_eta(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.progress")
    with caplog.at_level(logging.INFO, logger="test.progress"):
        progress = Progress("decode", 4, interval=0.0, logger=logger)
        progress.update(2)
        seconds = progress.finish()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert re.fullmatch(r"decode: 2/4 objects \(50%\), [\d.]+ objects/s, ETA \d+s", lines[0])
    assert lines[1].startswith("decode: 2/4 objects (50%)") and ", done in " in lines[1]
    assert seconds >= 0
    assert Progress("x", 0).line().startswith("x: 0/0 objects (100%), 0.0 objects/s, ETA ?")


def _big_jpeg(size: tuple[int, int], **params: Any) -> bytes:
    out = io.BytesIO()
    photo = source_image("chelsea").convert("RGB").resize(size, Image.Resampling.BICUBIC)
    photo.save(out, "JPEG", quality=90, **params)
    return out.getvalue()


@pytest.mark.parametrize("size", [(640, 480), (4000, 3000), (2400, 600)])
def test_decode_object_decodes_large_jpegs_reduced_but_reports_their_full_size(size: tuple[int, int]) -> None:
    data = _big_jpeg(size)
    decoded = decoding.decode_object(data, image_size=224)
    assert decoded.verdict == "ok" and decoded.thumbnail is not None
    assert (decoded.metadata["width"], decoded.metadata["height"]) == size
    full = check_image(data)
    assert full.image is not None
    expected = image_metadata(np.asarray(full.image), size_in_bytes=len(data))
    assert decoded.metadata["luminance"] == pytest.approx(expected["luminance"], abs=0.002)
    assert decoded.metadata["sharpness"] == pytest.approx(expected["sharpness"], rel=0.02)
    assert decoded.thumbnail.shape == (224, 224, 3)
    whole = np.asarray(
        full.image.resize((224, 224), Image.Resampling.BILINEAR, reducing_gap=2.0), dtype=float
    )
    assert np.abs(decoded.thumbnail.astype(float) - whole).mean() < 3


def test_decode_object_flags_truncated_large_jpegs() -> None:
    data = _big_jpeg((4000, 3000), progressive=True)
    for cut in (len(data) // 3, len(data) - 2):
        decoded = decoding.decode_object(data[:cut], image_size=224)
        assert decoded.verdict == "corrupt" and decoded.reason is not None
        assert decoded.reason.startswith("truncated"), decoded.reason
