"""Datasource and artifact locations on fsspec filesystems: listing, streamed reads, byte accounting.

A :class:`Location` is an fsspec filesystem plus a root path inside it. The Airflow side builds it from an
``ObjectStoragePath`` (which resolves the connection's credentials); tests and plain Python build it with
:func:`location_from_uri`. Nothing here knows about Airflow.

Reads never touch local disk: an object up to ``RANGED_READ_BYTES`` is one GET into memory, a larger one is
streamed as ranged GETs of that size. Transient transport errors are retried by the filesystem (botocore's
retry policy and s3fs's own loop for S3, gcsfs's loop for GCS, azure-core's retry policy for Azure Blob); what
is left after those retries surfaces as :class:`ObjectReadError` for that one object.
"""

from __future__ import annotations

import posixpath
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import fsspec
import pandas as pd
from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem

from lightly_tasks.config import redact_uri

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
OBJECT_COLUMNS = ["key", "size", "etag", "last_modified"]
RANGED_READ_BYTES = 16 * 2**20
"""Objects up to this size are read with one GET; larger ones as ranged GETs of this size."""
S3_CLIENT_CONFIG: dict[str, Any] = {"retries": {"total_max_attempts": 8, "mode": "adaptive"}}
"""botocore client config for S3 datasources: retry 5xx, throttling and dropped connections with backoff.

Keys the Airflow connection sets in its extras' ``config_kwargs`` take precedence."""


class DatasourceNotFoundError(FileNotFoundError):
    """The datasource folder, bucket or prefix does not exist."""


class DatasourceAccessError(PermissionError):
    """The datasource's credentials may not list it."""


class ObjectReadError(OSError):
    """Reading one object failed for a reason other than its absence, after the filesystem's retries."""


def read_failure_reason(exc: OSError) -> str:
    """The verdict reason for an object whose read failed: it vanished after listing, or the read itself failed."""
    if isinstance(exc, FileNotFoundError):
        return "missing: the object disappeared after listing"
    return f"read error: {type(exc).__name__}: {exc}"


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Exceptions a filesystem raises for a failed transfer (OS errors plus botocore's and aiohttp's own)."""
    errors: list[type[BaseException]] = [OSError]
    try:
        from botocore.exceptions import BotoCoreError, ClientError

        errors += [BotoCoreError, ClientError]
    except ImportError:  # pragma: no cover - botocore comes with the amazon provider
        pass
    try:
        from aiohttp import ClientError as AiohttpClientError

        errors.append(AiohttpClientError)
    except ImportError:  # pragma: no cover - aiohttp comes with s3fs
        pass
    try:
        from gcsfs.retry import HttpError as GcsHttpError
        from google.auth.exceptions import GoogleAuthError

        errors += [GcsHttpError, GoogleAuthError]
    except ImportError:  # pragma: no cover - gcsfs comes with the google provider
        pass
    try:
        from azure.core.exceptions import AzureError

        errors.append(AzureError)
    except ImportError:  # pragma: no cover - azure-core comes with adlfs
        pass
    return tuple(errors)


TRANSPORT_ERRORS = _transport_errors()


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
    if not key or key.endswith("/"):
        return False  # the prefix itself, or a zero-byte "folder" marker key of an object store
    parts = key.split("/")
    if any(p.startswith(".") for p in parts):
        return False  # hidden files and folders, e.g. .lightly/ of exported predictions
    return posixpath.splitext(key)[1].lower() in extensions


def bucket_of(location: Location) -> str | None:
    """The bucket (container) name of an object-store location; None for a local folder."""
    if isinstance(location.fs, LocalFileSystem):
        return None
    return location.root.lstrip("/").split("/", 1)[0]


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
        return (
            pd.Timestamp(value).tz_localize("UTC")
            if pd.Timestamp(value).tzinfo is None
            else pd.Timestamp(value)
        )
    return pd.NaT


_LISTING_HINTS = {
    "s3": ("the connection's endpoint_url and region", "list it (s3:ListBucket) and read its objects (s3:GetObject)"),
    "gs": (
        "the connection's project and gcs.endpoint",
        "list and read its objects (storage.objects.list and storage.objects.get, e.g. the Storage Object Viewer "
        "role)",
    ),
    "az": (
        "the connection's account URL (host) or connection string",
        "list and read its blobs (e.g. the Storage Blob Data Reader role, or a SAS with read and list "
        "permissions on the container)",
    ),
}


def _status_of(exc: BaseException) -> int | None:
    """The HTTP status an object-store client error carries (gcsfs: ``code``, azure-core: ``status_code``)."""
    for name in ("status_code", "code"):
        value = getattr(exc, name, None)
        if isinstance(value, (int, str)) and str(value).isdigit():
            return int(value)
    return None


def _listing_error(location: Location, exc: Exception) -> Exception:
    """The exception to raise for a failed listing: not found / access denied naming the bucket, else ``exc``.

    s3fs maps S3's errors to FileNotFoundError / PermissionError; gcsfs raises FileNotFoundError for a missing
    bucket and ``OSError("Forbidden: ...")`` or an ``HttpError`` with code 401/403 for denied access; adlfs lets
    azure-core's errors through (``status_code`` 404 / 401 / 403). Messages hold the redacted URI only.
    """
    scheme = location.uri.split("://", 1)[0] if "://" in location.uri else "file"
    where, permissions = _LISTING_HINTS.get(scheme, ("the path", "list and read it"))
    bucket = bucket_of(location)
    status = _status_of(exc)
    if isinstance(exc, FileNotFoundError) or status == 404:
        return DatasourceNotFoundError(
            f"datasource {location.uri}: bucket {bucket!r} does not exist (check the bucket name and {where})"
        )
    denied = isinstance(exc, PermissionError) or status in (401, 403)
    if denied or (isinstance(exc, OSError) and str(exc).startswith("Forbidden")):
        return DatasourceAccessError(
            f"datasource {location.uri}: access to bucket {bucket!r} denied; the connection's credentials need "
            f"permission to {permissions}"
        )
    return exc


def list_objects(location: Location, *, extensions: Iterable[str] = IMAGE_EXTENSIONS) -> pd.DataFrame:
    """List the objects below ``location`` whose extension is in ``extensions``, sorted by key.

    Returns a frame with ``key`` (path relative to the root, '/'-separated), ``size`` (bytes), ``etag`` (the
    store's ETag, or mtime-size for filesystems without one) and ``last_modified`` (UTC). Hidden files and
    folders (a path component starting with '.') and "folder" marker keys (ending in '/') are skipped. On an
    object store the listing pages through any number of keys; an empty or absent prefix lists nothing.
    Raises :class:`DatasourceNotFoundError` naming the URI (and bucket) when the folder or bucket does not
    exist, :class:`DatasourceAccessError` when the credentials may not list it.
    """
    fs, root = location.fs, location.root
    fs.invalidate_cache(root)  # a long-lived filesystem must not answer a later run from an old listing
    if isinstance(fs, LocalFileSystem):
        if not fs.exists(root):
            raise DatasourceNotFoundError(f"datasource {location.uri} does not exist")
        if not fs.isdir(root):
            raise DatasourceNotFoundError(f"datasource {location.uri} is not a folder or prefix")
    try:
        found = fs.find(root, detail=True, withdirs=False)
        if not found and not isinstance(fs, LocalFileSystem) and not fs.exists(bucket_of(location)):
            # adlfs lists a missing container as empty; s3fs and gcsfs raise FileNotFoundError themselves
            raise FileNotFoundError(bucket_of(location))
    except Exception as exc:
        error = _listing_error(location, exc)
        if error is exc:
            raise
        raise error from exc
    extensions = frozenset(e.lower() for e in extensions)
    prefix = root.rstrip("/") + "/"
    rows = []
    for path, info in found.items():
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


def iter_object(
    location: Location,
    key: str,
    counter: ByteCounter | None = None,
    *,
    size: int | None = None,
    chunk_bytes: int = RANGED_READ_BYTES,
) -> Iterator[bytes]:
    """Stream one object's bytes, counting each chunk as it arrives.

    ``size`` is the listed size. An object of at most ``chunk_bytes`` is one GET of the whole object, sent as
    the range ``bytes=0-`` so that s3fs does not ask for its size first; a larger one is read as ranged GETs
    of ``chunk_bytes``; a zero-byte one is not fetched at all; one of unknown size is a plain whole-object
    read (s3fs may ask for its size first). Raises FileNotFoundError when the object is gone and
    :class:`ObjectReadError` for any other failure left after the retries.
    """
    path = location.path(key)
    if size == 0:
        return
    try:
        if size is not None and size > chunk_bytes:
            # cat_file with an explicit range is one GET; s3fs's file objects would HEAD the object first
            for start in range(0, size, chunk_bytes):
                chunk = location.fs.cat_file(path, start=start, end=min(start + chunk_bytes, size))
                if counter is not None:
                    counter.add(len(chunk))
                yield chunk
            return
        data = location.fs.cat_file(path) if size is None else location.fs.cat_file(path, start=0)
    except FileNotFoundError:
        raise
    except TRANSPORT_ERRORS as exc:
        raise ObjectReadError(f"{type(exc).__name__}: {exc}") from exc
    if counter is not None:
        counter.add(len(data))
    yield data


def read_object(
    location: Location, key: str, counter: ByteCounter | None = None, *, size: int | None = None
) -> bytes:
    """Read one object into memory (see :func:`iter_object` for how) and count its bytes."""
    return b"".join(iter_object(location, key, counter, size=size))


def safe_key(key: str) -> str:
    """``key`` normalised to a relative path that cannot escape its root; raises ValueError otherwise."""
    normalised = posixpath.normpath(key.replace("\\", "/"))
    if normalised.startswith("/") or normalised == ".." or normalised.startswith("../") or normalised == ".":
        raise ValueError(f"object key {key!r} would escape the output root")
    return normalised
