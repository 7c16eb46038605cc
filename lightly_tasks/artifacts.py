"""The run's artifact layout and its table / JSON / array files on any fsspec location.

Layout: ``<artifacts_root>/<dataset>/runs/<run_id>/<stage>/...``. Tables are Parquet; embeddings are stored
as a fixed-size-list float32 column so they load back as one (N, D) array without copies per row.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from lightly_tasks.storage import Location


def safe_run_id(run_id: str) -> str:
    """An Airflow run id (``manual__2026-11-25T13:00:00+00:00``) made safe as a path component."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", run_id).strip("._") or "run"


def run_location(artifacts: Location, dataset: str, run_id: str) -> Location:
    """``<artifacts_root>/<dataset>/runs/<run_id>``."""
    return artifacts.child(dataset, "runs", safe_run_id(run_id))


def write_bytes(location: Location, relpath: str, data: bytes) -> str:
    """Write ``data`` to ``relpath`` below ``location`` (overwriting) and return its URI."""
    return write_chunks(location, relpath, [data])


def write_chunks(location: Location, relpath: str, chunks: Iterable[bytes]) -> str:
    """Stream ``chunks`` into ``relpath`` below ``location`` (overwriting) and return its URI.

    The first chunk is taken before the file is opened, so a source that fails on its first read leaves no
    file behind. Parent folders are created on local filesystems only: object stores have none, and s3fs's
    ``makedirs`` would probe (or even create) the bucket on every write.
    """
    path = location.path(relpath)
    chunks = iter(chunks)
    first = next(chunks, b"")
    if isinstance(location.fs, LocalFileSystem):
        location.fs.makedirs(location.fs._parent(path), exist_ok=True)
    with location.fs.open(path, "wb") as f:
        f.write(first)
        for chunk in chunks:
            f.write(chunk)
    return location.child_uri(relpath)


def write_json(location: Location, relpath: str, obj: Any) -> str:
    """Write ``obj`` as indented JSON and return its URI."""
    return write_bytes(location, relpath, json.dumps(obj, indent=2, sort_keys=False, default=str).encode())


def read_json(location: Location, relpath: str) -> Any:
    with location.fs.open(location.path(relpath), "rb") as f:
        return json.load(f)


def write_table(location: Location, relpath: str, table: pd.DataFrame | pa.Table) -> str:
    """Write a table as Parquet (overwriting) and return its URI."""
    if isinstance(table, pd.DataFrame):
        table = pa.Table.from_pandas(table, preserve_index=False)
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return write_bytes(location, relpath, buffer.getvalue())


def read_table(location: Location, relpath: str) -> pd.DataFrame:
    """Read a Parquet table written by :func:`write_table`."""
    with location.fs.open(location.path(relpath), "rb") as f:
        return pq.read_table(f).to_pandas()


def embeddings_table(keys: list[str], vectors: np.ndarray) -> pa.Table:
    """Table of ``key`` and ``embedding`` (fixed-size list of float32) from keys and an (N, D) array."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    dim = vectors.shape[1] if vectors.ndim == 2 else 0
    flat = pa.array(vectors.reshape(-1), type=pa.float32())
    column = pa.FixedSizeListArray.from_arrays(flat, dim) if dim else pa.array([], pa.list_(pa.float32(), 0))
    return pa.table({"key": pa.array(keys, pa.string()), "embedding": column})


def read_embeddings(location: Location, relpath: str) -> tuple[list[str], np.ndarray]:
    """Keys and the (N, D) float32 matrix of an embeddings table."""
    with location.fs.open(location.path(relpath), "rb") as f:
        table = pq.read_table(f)
    keys = table.column("key").to_pylist()
    column = table.column("embedding").combine_chunks()
    dim = column.type.list_size if pa.types.is_fixed_size_list(column.type) else 0
    values = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return keys, values.reshape(len(keys), dim)


def write_array(location: Location, relpath: str, array: np.ndarray) -> str:
    """Write a numpy array as ``.npy`` and return its URI."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return write_bytes(location, relpath, buffer.getvalue())


def read_array(location: Location, relpath: str) -> np.ndarray:
    with location.fs.open(location.path(relpath), "rb") as f:
        return np.load(io.BytesIO(f.read()), allow_pickle=False)


def remove(location: Location, relpath: str) -> None:
    """Delete a file or folder below ``location`` if it exists (idempotent)."""
    path = location.path(relpath)
    if location.fs.exists(path):
        location.fs.rm(path, recursive=True)
