"""Datasource and artifact locations on fsspec filesystems: listing, whole-object reads, byte accounting.

A :class:`Location` is an fsspec filesystem plus a root path inside it. The Airflow side builds it from an
``ObjectStoragePath`` (which resolves the connection's credentials); tests and plain Python build it with
:func:`location_from_uri`. Nothing here knows about Airflow.
"""

from __future__ import annotations

import posixpath
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import fsspec
import pandas as pd
from fsspec import AbstractFileSystem

from lightly_tasks.config import redact_uri

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
OBJECT_COLUMNS = ["key", "size", "etag", "last_modified"]


class DatasourceNotFoundError(FileNotFoundError):
    """The datasource folder, bucket or prefix does not exist."""


@dataclass
class ByteCounter:
    """Thread-safe running total of bytes read from a datasource."""

    total: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, n: int) -> None:
        with self._lock:
            self.total += n


@dataclass(frozen=True)
class Location:
    """A root path on an fsspec filesystem; ``uri`` is the user-facing URI with credentials redacted."""

    fs: AbstractFileSystem
    root: str
    uri: str

    def path(self, *parts: str) -> str:
        """The filesystem path of ``parts`` (a relative key or sub-path) below the root."""
        return posixpath.join(self.root, *parts) if parts else self.root

    def child_uri(self, *parts: str) -> str:
        """User-facing URI of ``parts`` below the root, for reports and logs."""
        return posixpath.join(self.uri, *parts)

    def child(self, *parts: str) -> Location:
        """A location rooted at ``parts`` below this one, on the same filesystem."""
        return Location(fs=self.fs, root=self.path(*parts), uri=self.child_uri(*parts))


def location_from_uri(uri: str, **storage_options: Any) -> Location:
    """Build a :class:`Location` from a URI with fsspec alone (``file://`` and anything fsspec knows)."""
    fs, root = fsspec.core.url_to_fs(uri, **storage_options)
    return Location(fs=fs, root=root.rstrip("/") or "/", uri=redact_uri(uri.rstrip("/")))


def _is_listed(key: str, extensions: Iterable[str]) -> bool:
    parts = key.split("/")
    if any(p.startswith(".") for p in parts):
        return False  # hidden files and folders, e.g. .lightly/ of exported predictions
    return posixpath.splitext(key)[1].lower() in extensions


def _etag(info: dict[str, Any]) -> str:
    for name in ("ETag", "etag", "md5Hash", "content_md5"):
        if info.get(name):
            return str(info[name]).strip('"')
    mtime = info.get("mtime") or info.get("LastModified") or info.get("last_modified") or ""
    if isinstance(mtime, datetime):
        mtime = mtime.timestamp()
    return f"{mtime}-{info.get('size')}"


def _last_modified(info: dict[str, Any]) -> pd.Timestamp:
    for name in ("LastModified", "last_modified", "mtime", "updated", "created"):
        value = info.get(name)
        if value is None:
            continue
        if isinstance(value, (int, float)):
            return pd.Timestamp(value, unit="s", tz="UTC")
        return pd.Timestamp(value).tz_localize("UTC") if pd.Timestamp(value).tzinfo is None else pd.Timestamp(value)
    return pd.NaT


def list_objects(location: Location, *, extensions: Iterable[str] = IMAGE_EXTENSIONS) -> pd.DataFrame:
    """List the objects below ``location`` whose extension is in ``extensions``, sorted by key.

    Returns a frame with ``key`` (path relative to the root, '/'-separated), ``size`` (bytes), ``etag`` (the
    store's ETag, or mtime-size for filesystems without one) and ``last_modified`` (UTC). Hidden files and
    folders (a path component starting with '.') are skipped.
    Raises :class:`DatasourceNotFoundError` naming the URI when the root does not exist.
    """
    fs, root = location.fs, location.root
    if not fs.exists(root):
        raise DatasourceNotFoundError(f"datasource {location.uri} does not exist")
    if not fs.isdir(root):
        raise DatasourceNotFoundError(f"datasource {location.uri} is not a folder or prefix")
    extensions = frozenset(e.lower() for e in extensions)
    prefix = root.rstrip("/") + "/"
    rows = []
    for path, info in fs.find(root, detail=True, withdirs=False).items():
        if info.get("type") == "directory" or not path.startswith(prefix):
            continue
        key = path[len(prefix) :]
        if not _is_listed(key, extensions):
            continue
        rows.append((key, int(info.get("size") or 0), _etag(info), _last_modified(info)))
    frame = pd.DataFrame(rows, columns=OBJECT_COLUMNS)
    frame["size"] = frame["size"].astype("int64")
    frame["last_modified"] = pd.to_datetime(frame["last_modified"], utc=True)
    return frame.sort_values("key", kind="stable").reset_index(drop=True)


def read_object(location: Location, key: str, counter: ByteCounter | None = None) -> bytes:
    """Read one object whole into memory (one GET on object stores) and count its bytes."""
    data = location.fs.cat_file(location.path(key))
    if counter is not None:
        counter.add(len(data))
    return data


def safe_key(key: str) -> str:
    """``key`` normalised to a relative path that cannot escape its root; raises ValueError otherwise."""
    normalised = posixpath.normpath(key.replace("\\", "/"))
    if normalised.startswith("/") or normalised == ".." or normalised.startswith("../") or normalised == ".":
        raise ValueError(f"object key {key!r} would escape the output root")
    return normalised
