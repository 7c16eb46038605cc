"""The run's one decoding pass over a shard: read each object once, check it, measure it, cache it.

For every object the pass reads the bytes (counted), computes the content hash, decodes and checks the image
(:mod:`lightly_tasks.corruptness`), computes its metadata (:mod:`lightly_tasks.metadata`) and writes a square
uint8 thumbnail at embedding size to the decoded cache. Later stages (embedding, training, pretagging) read
that cache, never the originals, so each object crosses the network once per run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from lightly_tasks import artifacts
from lightly_tasks.corruptness import DEFAULT_MAX_PIXELS, check_image, content_hash
from lightly_tasks.metadata import reduced_decode_size, working_copy, working_copy_metadata
from lightly_tasks.ordered_map import ordered_map
from lightly_tasks.progress import Progress
from lightly_tasks.storage import ByteCounter, Location, read_failure_reason, read_object
from lightly_tasks.thumbnails import thumbnail

log = logging.getLogger(__name__)

CACHE_PART_SIZE = 256


@dataclass(frozen=True)
class Decoded:
    """What the pass keeps of one object; ``thumbnail`` is (S, S, 3) uint8 when the object is usable."""

    verdict: str  # "ok" or "corrupt"
    reason: str | None
    content_hash: str | None
    metadata: dict[str, Any]
    thumbnail: np.ndarray | None


def decode_object(
    data: bytes, *, image_size: int, max_pixels: int = DEFAULT_MAX_PIXELS, verify: bool = True
) -> Decoded:
    """Check, measure and thumbnail one object's bytes; never raises on bad data.

    Only what is needed is decoded: a JPEG at the smallest DCT scale (1/2, 1/4, 1/8) from which the
    metadata's working copy (<= 512 px) is still an integer box-reduction and whose sides stay at least
    ``image_size`` (`metadata.reduced_decode_size`). The working copy is made once; the metadata and, when
    both its sides are at least ``image_size``, the thumbnail come from it (else from the decoded image).
    ``width``/``height`` stay the full, header-declared size.
    """
    digest = content_hash(data)

    def draft_size(width: int, height: int) -> tuple[int, int]:
        return reduced_decode_size(width, height, min_side=image_size)

    check = check_image(data, max_pixels=max_pixels, verify=verify, draft_size=draft_size)
    if not check.ok or check.image is None or check.full_size is None:
        return Decoded("corrupt", check.reason, digest, {"sizeInBytes": len(data)}, None)
    width, height = check.full_size
    work = working_copy(check.image, full_size=check.full_size)
    meta = working_copy_metadata(work, width=width, height=height, size_in_bytes=len(data))
    source = work if min(work.size) >= image_size else check.image
    return Decoded("ok", None, digest, meta, thumbnail(source, image_size))


def decode_shard(
    datasource: Location,
    objects: pd.DataFrame,
    cache: Location,
    *,
    image_size: int,
    counter: ByteCounter,
    workers: int = 4,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    verify: bool = True,
    max_object_bytes: int | None = None,
) -> pd.DataFrame:
    """Run the decoding pass over ``objects`` (key, size, etag, ...) and write the cache parts under ``cache``.

    Returns one row per object: the input columns plus ``verdict``, ``reason``, ``content_hash``,
    ``cache_part``/``cache_row`` (where its thumbnail is; -1 when corrupt) and the metadata columns.
    Objects whose listed size is over ``max_object_bytes`` are judged "too large: ..." without being read.
    """

    def work(item: tuple[str, int | None]) -> Decoded:
        key, size = item
        if max_object_bytes is not None and size is not None and size > max_object_bytes:
            reason = f"too large: {size} bytes, over max_object_bytes={max_object_bytes}; not read"
            return Decoded("corrupt", reason, None, {"sizeInBytes": size}, None)
        try:
            data = read_object(datasource, key, counter, size=size)
        except OSError as exc:
            return Decoded("corrupt", read_failure_reason(exc), None, {}, None)
        return decode_object(data, image_size=image_size, max_pixels=max_pixels, verify=verify)

    progress = Progress("decode", len(objects))
    rows: list[dict[str, Any]] = []
    part: list[np.ndarray] = []
    part_index = 0

    def flush() -> None:
        nonlocal part, part_index
        if part:
            artifacts.write_array(cache, f"part-{part_index:05d}.npy", np.stack(part))
            part, part_index = [], part_index + 1

    keys = objects["key"].tolist()
    sizes = objects["size"].astype("int64").tolist() if "size" in objects else [None] * len(keys)
    items = list(zip(keys, sizes, strict=True))
    for key, decoded in zip(keys, ordered_map(work, items, workers=workers, window=4 * workers), strict=True):
        row: dict[str, Any] = {
            "key": key,
            "verdict": decoded.verdict,
            "reason": decoded.reason,
            "content_hash": decoded.content_hash,
            "cache_part": -1,
            "cache_row": -1,
        }
        if decoded.thumbnail is not None:
            row["cache_part"], row["cache_row"] = part_index, len(part)
            part.append(decoded.thumbnail)
            if len(part) == CACHE_PART_SIZE:
                flush()
        else:
            log.warning("corrupt: %s: %s", key, decoded.reason)
        row.update(decoded.metadata)
        rows.append(row)
        progress.update()
    flush()
    progress.finish()
    result = (
        pd.DataFrame(rows)
        if rows
        else pd.DataFrame(columns=["key", "verdict", "reason", "content_hash", "cache_part", "cache_row"])
    )
    return objects.merge(result, on="key", how="left", validate="one_to_one")


def iter_cache(cache: Location, table: pd.DataFrame) -> Iterator[np.ndarray]:
    """Yield the cached thumbnails of ``table``'s ok rows, part by part, as (n, S, S, 3) uint8 arrays."""
    ok = table[table["verdict"] == "ok"]
    for part_index, rows in ok.groupby("cache_part", sort=True):
        part = artifacts.read_array(cache, f"part-{int(part_index):05d}.npy")
        yield part[rows["cache_row"].to_numpy()]


@dataclass(frozen=True)
class CachePart:
    """One cache part's ok rows, loaded on demand: ``load()`` returns (n, S, S, 3) uint8."""

    n: int
    load: Callable[[], np.ndarray]


def cache_parts(cache: Location, table: pd.DataFrame) -> list[CachePart]:
    """The cache parts holding ``table``'s ok rows, for readers that visit parts in their own (random) order."""
    ok = table[table["verdict"] == "ok"]
    parts = []
    for part_index, rows in ok.groupby("cache_part", sort=True):
        name, index = f"part-{int(part_index):05d}.npy", rows["cache_row"].to_numpy()
        parts.append(
            CachePart(len(index), lambda name=name, index=index: artifacts.read_array(cache, name)[index])
        )
    return parts
