"""The dataset store: datasets, samples, embeddings, tags, runs and the datapool (SQLAlchemy Core).

It is the project's own database (a SQLite file by default, PostgreSQL by URL), never Airflow's metadata DB.
A run's results land in one transaction (`DatasetStore.commit_run`): samples, the run's tag, tag links,
datapool entries and the run row all appear together or not at all, and a retried commit of the same run is
a no-op, so the pipeline gets exactly-once semantics per (dataset, run_id).

A lease per dataset (`DatasetStore.acquire_lease`) keeps two curations of one dataset from running at once:
a run takes it before listing, its commit checks and releases it in the same transaction, and it expires so
that a dead run cannot block the dataset for ever.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

RUN_STATUS_COMMITTED = "committed"

SELECTED_COLUMNS = ("key", "etag", "size", "content_hash", "embedding", "metadata", "distance")
PROCESSED_COLUMNS = ("key", "etag")
_DATAPOOL_CHUNK = 50_000

SAMPLE_COLUMNS = ("key", "datasource", "etag", "size", "content_hash", "metadata", "distance", "run_id")

_Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
_Timestamp = sa.DateTime(timezone=True)

metadata = sa.MetaData()

datasets = sa.Table(
    "datasets",
    metadata,
    sa.Column("id", _Id, primary_key=True, autoincrement=True),
    sa.Column("name", sa.Text, nullable=False, unique=True),
    sa.Column("embedding_dim", sa.Integer, nullable=True),
    sa.Column("created_at", _Timestamp, nullable=False),
)

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("id", _Id, primary_key=True, autoincrement=True),
    sa.Column("dataset_id", _Id, sa.ForeignKey("datasets.id", ondelete="CASCADE"), nullable=False),
    sa.Column("run_id", sa.Text, nullable=False),
    sa.Column("datasource", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("conf", _Json, nullable=False),
    sa.Column("counts", _Json, nullable=False),
    sa.Column("bytes_read", sa.BigInteger, nullable=False),
    sa.Column("datasource_bytes", sa.BigInteger, nullable=False),
    sa.Column("started_at", _Timestamp, nullable=True),
    sa.Column("finished_at", _Timestamp, nullable=False),
    sa.UniqueConstraint("dataset_id", "run_id", name="uq_runs_dataset_run_id"),
)

tags = sa.Table(
    "tags",
    metadata,
    sa.Column("id", _Id, primary_key=True, autoincrement=True),
    sa.Column("dataset_id", _Id, sa.ForeignKey("datasets.id", ondelete="CASCADE"), nullable=False),
    sa.Column("run_pk", _Id, sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False, unique=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("created_at", _Timestamp, nullable=False),
    sa.UniqueConstraint("dataset_id", "name", name="uq_tags_dataset_name"),
)

samples = sa.Table(
    "samples",
    metadata,
    sa.Column("id", _Id, primary_key=True, autoincrement=True),
    sa.Column("dataset_id", _Id, sa.ForeignKey("datasets.id", ondelete="CASCADE"), nullable=False),
    sa.Column("datasource", sa.Text, nullable=False),
    sa.Column("key", sa.Text, nullable=False),
    sa.Column("etag", sa.Text, nullable=False),
    sa.Column("size", sa.BigInteger, nullable=True),
    sa.Column("content_hash", sa.Text, nullable=True),
    sa.Column("embedding", sa.LargeBinary, nullable=True),
    sa.Column("metadata", _Json, nullable=False),
    sa.Column("distance", sa.Float, nullable=True),
    # The run that wrote the sample's current version (its first selection, or a re-selection after a change).
    sa.Column("run_pk", _Id, sa.ForeignKey("runs.id"), nullable=False),
    sa.UniqueConstraint("dataset_id", "datasource", "key", name="uq_samples_dataset_datasource_key"),
    sa.Index("ix_samples_dataset_run", "dataset_id", "run_pk"),
)

sample_tags = sa.Table(
    "sample_tags",
    metadata,
    sa.Column("sample_id", _Id, sa.ForeignKey("samples.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("tag_id", _Id, sa.ForeignKey("tags.id", ondelete="CASCADE"), primary_key=True),
    sa.Index("ix_sample_tags_tag", "tag_id"),
)

datapool = sa.Table(
    "datapool",
    metadata,
    sa.Column("id", _Id, primary_key=True, autoincrement=True),
    sa.Column("dataset_id", _Id, sa.ForeignKey("datasets.id", ondelete="CASCADE"), nullable=False),
    sa.Column("datasource", sa.Text, nullable=False),
    sa.Column("key", sa.Text, nullable=False),
    sa.Column("etag", sa.Text, nullable=False),
    sa.Column("run_pk", _Id, sa.ForeignKey("runs.id"), nullable=False),
    sa.UniqueConstraint("dataset_id", "datasource", "key", name="uq_datapool_dataset_datasource_key"),
)

leases = sa.Table(
    "leases",
    metadata,
    sa.Column("dataset_id", _Id, sa.ForeignKey("datasets.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("holder", sa.Text, nullable=False),
    sa.Column("acquired_at", _Timestamp, nullable=False),
    sa.Column("expires_at", _Timestamp, nullable=False),
)


class StoreError(RuntimeError):
    """The store cannot be opened or used (bad URL, unreachable server, unsupported database)."""


class TagExistsError(ValueError):
    """A run's tag name is already used by another run of the same dataset."""


class EmbeddingDimError(ValueError):
    """Embeddings of a commit do not all have the dataset's dimension."""


class DatasetBusyError(RuntimeError):
    """Another run holds the dataset's lease (or took it over after this run's lease expired)."""


@dataclass(frozen=True)
class Lease:
    """Who may curate a dataset now: the holder (a run id) until ``expires``."""

    dataset: str
    holder: str
    acquired: datetime
    expires: datetime


@dataclass(frozen=True)
class RunCommit:
    """Everything one successful run adds to the store; written by `DatasetStore.commit_run`."""

    dataset: str
    datasource: str
    run_id: str
    tag: str
    conf: dict
    selected: pd.DataFrame
    processed: pd.DataFrame
    counts: dict[str, int]
    bytes_read: int
    datasource_bytes: int
    started: datetime | None = None


@dataclass(frozen=True)
class TagInfo:
    """A tag of a dataset: the samples one run selected."""

    name: str
    run_id: str
    n_samples: int
    created: datetime


@dataclass(frozen=True)
class RunInfo:
    """A committed run as recorded in the store."""

    dataset: str
    run_id: str
    datasource: str
    status: str
    tag: str | None
    conf: dict
    counts: dict[str, int]
    bytes_read: int
    datasource_bytes: int
    started: datetime | None
    finished: datetime


def redact_db_url(url: str | sa.URL) -> str:
    """The database URL with its password masked, for logs and error messages."""
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "<unparseable database URL>"


def _json_default(value: Any) -> Any:
    """Let numpy scalars, arrays and datetimes inside conf/metadata/counts serialise as plain JSON."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _json_dumps(value: Any) -> str:
    return json.dumps(value, default=_json_default)


def _utc(value: datetime | None) -> datetime | None:
    """SQLite hands timestamps back naive; every timestamp the store returns is aware UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def _is_missing(value: Any) -> bool:
    return (
        value is None or value is pd.NA or value is pd.NaT or (isinstance(value, float) and math.isnan(value))
    )


def _column(frame: pd.DataFrame, name: str) -> list[Any]:
    """A frame column as Python objects, with every kind of missing value (NaN, NA, None) as None."""
    return [None if _is_missing(v) else v for v in frame[name].astype(object).tolist()]


def _require_columns(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} frame lacks columns {missing}; it has {list(frame.columns)}")


def _require_unique_keys(keys: list[Any], what: str) -> None:
    if any(k is None for k in keys):
        raise ValueError(f"{what} frame has rows without a key")
    if len(set(keys)) != len(keys):
        dupes = sorted(pd.Series(keys)[pd.Series(keys).duplicated()].unique().tolist())[:5]
        raise ValueError(f"{what} frame has duplicate keys, e.g. {dupes}")


def _sample_rows(run: RunCommit) -> tuple[list[dict[str, Any]], int | None]:
    """Validate the selected frame and turn it into insert parameters; also return the embedding dim."""
    frame = run.selected
    _require_columns(frame, SELECTED_COLUMNS, "selected")
    keys = _column(frame, "key")
    _require_unique_keys(keys, "selected")
    etags = _column(frame, "etag")
    if any(e is None for e in etags):
        raise ValueError("selected frame has rows without an etag")
    dims: set[int] = set()
    blobs: list[bytes | None] = []
    for vector in frame["embedding"].tolist():
        if _is_missing(vector):
            blobs.append(None)
            continue
        array = np.asarray(vector, dtype=np.float32)
        if array.ndim != 1:
            raise EmbeddingDimError(f"each embedding must be a 1-D vector, got shape {array.shape}")
        dims.add(array.shape[0])
        blobs.append(array.tobytes())
    if len(dims) > 1:
        raise EmbeddingDimError(f"selected embeddings of run {run.run_id!r} have mixed dims {sorted(dims)}")
    sizes, hashes = _column(frame, "size"), _column(frame, "content_hash")
    metas, distances = _column(frame, "metadata"), _column(frame, "distance")
    rows = [
        {
            "datasource": run.datasource,
            "key": str(key),
            "etag": str(etag),
            "size": None if size is None else int(size),
            "content_hash": None if content_hash is None else str(content_hash),
            "embedding": blob,
            "metadata": dict(meta) if meta is not None else {},
            "distance": None if distance is None else float(distance),
        }
        for key, etag, size, content_hash, blob, meta, distance in zip(
            keys, etags, sizes, hashes, blobs, metas, distances, strict=True
        )
    ]
    return rows, (dims.pop() if dims else None)


def _datapool_entries(run: RunCommit) -> tuple[list[str], list[str]]:
    """Validate the processed frame; return its keys and etags, the run's datapool entries."""
    _require_columns(run.processed, PROCESSED_COLUMNS, "processed")
    keys, etags = _column(run.processed, "key"), _column(run.processed, "etag")
    _require_unique_keys(keys, "processed")
    if any(e is None for e in etags):
        raise ValueError("processed frame has rows without an etag")
    return [str(k) for k in keys], [str(e) for e in etags]


def _on_datapool_conflict(stmt: Any) -> Any:
    """An object seen before gets the new etag and the run that saw it last."""
    return stmt.on_conflict_do_update(
        index_elements=["dataset_id", "datasource", "key"],
        set_={"etag": stmt.excluded.etag, "run_pk": stmt.excluded.run_pk},
    )


def _enable_wal(cursor: Any, *, timeout_s: float = 60.0) -> None:
    """Switch a SQLite database to WAL, retrying while another connection holds the lock.

    Switching the journal mode needs an exclusive lock and SQLite answers "database is locked" at once,
    without its busy handler, when several processes open a new store file together; once in WAL the
    mode is persistent and the check below is a plain read.
    """
    deadline = time.monotonic() + timeout_s
    delay = 0.01
    while True:
        if str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal":
            return
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.5)


class DatasetStore:
    """Reads and writes one dataset store database (SQLite file or PostgreSQL) given its SQLAlchemy URL."""

    def __init__(self, url: str) -> None:
        """Connect and create the tables if missing (idempotent, safe from concurrent processes)."""
        try:
            parsed = sa.make_url(url)
        except sa.exc.ArgumentError:
            raise StoreError("dataset store URL is not a valid SQLAlchemy URL") from None
        self._display_url = parsed.render_as_string(hide_password=True)
        self._dialect = parsed.get_backend_name()
        if self._dialect not in ("sqlite", "postgresql"):
            raise StoreError(f"dataset store supports sqlite and postgresql URLs, not {self._display_url}")
        self._insert = sqlite.insert if self._dialect == "sqlite" else postgresql.insert
        self._engine = self._create_engine(parsed)
        try:
            with self._write() as conn:
                if self._dialect == "postgresql":
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext('lightly_tasks.store'))"))
                metadata.create_all(conn, checkfirst=True)
        except sa.exc.DBAPIError as exc:
            self._engine.dispose()
            raise StoreError(f"cannot open dataset store {self._display_url}: {exc.orig}") from None

    def __repr__(self) -> str:
        return f"DatasetStore({self._display_url!r})"

    def _create_engine(self, url: sa.URL) -> Engine:
        if self._dialect == "postgresql":
            return sa.create_engine(url, json_serializer=_json_dumps, pool_pre_ping=True)
        database = url.database
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, json_serializer=_json_dumps, connect_args={"timeout": 60})

        @sa.event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            # Take transaction control from pysqlite so that writers can BEGIN IMMEDIATE (see _on_begin).
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            _enable_wal(cursor)
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        @sa.event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            # Writers take SQLite's write lock up front, which serialises concurrent commits instead of
            # failing one of them with "database is locked" when it upgrades from a read lock.
            immediate = conn.get_execution_options().get("store_write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """A connection inside a write transaction: committed on success, rolled back on any exception."""
        with self._engine.connect() as conn:
            conn.execution_options(store_write=True)
            with conn.begin():
                yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._engine.connect() as conn, conn.begin():
            yield conn

    def close(self) -> None:
        """Release all pooled connections."""
        self._engine.dispose()

    def seen_objects(self, dataset: str, datasource: str) -> dict[str, str]:
        """The datapool of (dataset, datasource): key -> etag of every object an earlier run processed."""
        query = (
            sa.select(datapool.c.key, datapool.c.etag)
            .join(datasets, datasets.c.id == datapool.c.dataset_id)
            .where(datasets.c.name == dataset, datapool.c.datasource == datasource)
        )
        with self._read() as conn:
            return {key: etag for key, etag in conn.execute(query)}

    def embeddings(self, dataset: str) -> tuple[list[str], np.ndarray]:
        """Keys and (M, D) float32 embeddings of the dataset's samples that have one; (0, 0) when none."""
        query = (
            sa.select(samples.c.key, samples.c.embedding)
            .join(datasets, datasets.c.id == samples.c.dataset_id)
            .where(datasets.c.name == dataset, samples.c.embedding.is_not(None))
            .order_by(samples.c.id)
        )
        with self._read() as conn:
            rows = conn.execute(query).all()
        if not rows:
            return [], np.zeros((0, 0), dtype=np.float32)
        keys = [key for key, _ in rows]
        flat = np.frombuffer(b"".join(bytes(blob) for _, blob in rows), dtype=np.float32)
        return keys, flat.reshape(len(rows), -1).copy()

    def existing_embeddings(self, dataset: str) -> tuple[list[str], np.ndarray]:
        """Embeddings already in the dataset, for selection against them (same as `embeddings`)."""
        return self.embeddings(dataset)

    def existing_hashes(self, dataset: str) -> set[str]:
        """Content hashes of the dataset's samples, for duplicate detection across runs."""
        query = (
            sa.select(samples.c.content_hash)
            .join(datasets, datasets.c.id == samples.c.dataset_id)
            .where(datasets.c.name == dataset, samples.c.content_hash.is_not(None))
        )
        with self._read() as conn:
            return set(conn.execute(query).scalars())

    def acquire_lease(
        self, dataset: str, holder: str, *, ttl_seconds: float, now: datetime | None = None
    ) -> Lease:
        """Take (or renew, for the same holder) the dataset's lease until ``now + ttl_seconds``.

        Raises :class:`DatasetBusyError` naming the holder when another holder's lease has not expired. The
        dataset row is locked meanwhile, so of two racing callers exactly one gets the lease.
        """
        now = now or datetime.now(UTC)
        expires = now + timedelta(seconds=ttl_seconds)
        with self._write() as conn:
            dataset_id, _ = self._lock_dataset(conn, dataset, now)
            current = self._current_lease(conn, dataset_id, dataset, now)
            if current is not None and current.holder != holder:
                raise DatasetBusyError(
                    f"dataset {dataset!r} is being curated by run {current.holder!r} (lease until "
                    f"{current.expires.isoformat()}); two curations of one dataset never run at once"
                )
            acquired = current.acquired if current is not None else now
            stmt = self._insert(leases).values(
                dataset_id=dataset_id, holder=holder, acquired_at=acquired, expires_at=expires
            )
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=["dataset_id"],
                    set_={"holder": holder, "acquired_at": acquired, "expires_at": expires},
                )
            )
        return Lease(dataset=dataset, holder=holder, acquired=acquired, expires=expires)

    def release_lease(self, dataset: str, holder: str) -> bool:
        """Drop the dataset's lease if ``holder`` holds it; returns whether a lease was dropped."""
        dataset_id = sa.select(datasets.c.id).where(datasets.c.name == dataset).scalar_subquery()
        with self._write() as conn:
            result = conn.execute(
                leases.delete().where(leases.c.dataset_id == dataset_id, leases.c.holder == holder)
            )
        return bool(result.rowcount)

    def lease(self, dataset: str, now: datetime | None = None) -> Lease | None:
        """The dataset's unexpired lease, or None when nobody holds it."""
        now = now or datetime.now(UTC)
        with self._read() as conn:
            dataset_id = conn.execute(
                sa.select(datasets.c.id).where(datasets.c.name == dataset)
            ).scalar_one_or_none()
            return None if dataset_id is None else self._current_lease(conn, dataset_id, dataset, now)

    def _current_lease(self, conn: Connection, dataset_id: int, dataset: str, now: datetime) -> Lease | None:
        row = conn.execute(sa.select(leases).where(leases.c.dataset_id == dataset_id)).first()
        if row is None or _utc(row.expires_at) <= now:
            return None
        return Lease(dataset=dataset, holder=row.holder, acquired=_utc(row.acquired_at), expires=_utc(row.expires_at))

    def commit_run(self, run: RunCommit, *, lease_holder: str | None = None) -> bool:
        """Write a run's samples, tag, tag links, datapool entries and run row in one transaction.

        Returns False, writing nothing, when (dataset, run_id) was committed before; raises (writing
        nothing) on invalid input, a tag name used by another run, or an embedding dim mismatch. With
        ``lease_holder``, the commit also raises :class:`DatasetBusyError` unless that holder still has the
        dataset's lease (expired or not, as long as no other run took it over), and releases it on success.
        """
        sample_rows, dim = _sample_rows(run)
        pool_keys, pool_etags = _datapool_entries(run)
        now = datetime.now(UTC)
        with self._write() as conn:
            dataset_id, dataset_dim = self._lock_dataset(conn, run.dataset, now)
            already = conn.execute(
                sa.select(runs.c.id).where(runs.c.dataset_id == dataset_id, runs.c.run_id == run.run_id)
            ).first()
            if already is not None:
                conn.rollback()
                return False
            if lease_holder is not None:
                holder = conn.execute(
                    sa.select(leases.c.holder).where(leases.c.dataset_id == dataset_id)
                ).scalar_one_or_none()
                if holder != lease_holder:  # an expired lease still counts until another run takes it
                    raise DatasetBusyError(
                        f"run {run.run_id!r} does not hold the lease of dataset {run.dataset!r} (now "
                        f"{'held by run ' + repr(holder) if holder else 'free'}: it expired and another run "
                        "took it); nothing was committed, so no object is processed twice"
                    )
            if dim is not None and dataset_dim is not None and dim != dataset_dim:
                raise EmbeddingDimError(
                    f"dataset {run.dataset!r} holds {dataset_dim}-dim embeddings; run {run.run_id!r} "
                    f"brings {dim}-dim ones"
                )
            if dim is not None and dataset_dim is None:
                conn.execute(datasets.update().where(datasets.c.id == dataset_id).values(embedding_dim=dim))
            run_pk = self._insert_run(conn, dataset_id, run, now)
            tag_id = self._insert_tag(conn, dataset_id, run_pk, run, now)
            self._upsert_samples(conn, dataset_id, run_pk, sample_rows)
            conn.execute(
                sa.insert(sample_tags).from_select(
                    ["sample_id", "tag_id"],
                    sa.select(samples.c.id, sa.literal(tag_id, _Id)).where(
                        samples.c.dataset_id == dataset_id, samples.c.run_pk == run_pk
                    ),
                )
            )
            self._upsert_datapool(conn, dataset_id, run_pk, run.datasource, pool_keys, pool_etags)
            if lease_holder is not None:
                conn.execute(
                    leases.delete().where(leases.c.dataset_id == dataset_id, leases.c.holder == lease_holder)
                )
        return True

    def _lock_dataset(self, conn: Connection, dataset: str, now: datetime) -> tuple[int, int | None]:
        """Get or create the dataset row and lock it, so commits to one dataset run one at a time."""
        conn.execute(
            self._insert(datasets)
            .values(name=dataset, created_at=now)
            .on_conflict_do_nothing(index_elements=["name"])
        )
        row = conn.execute(
            sa.select(datasets.c.id, datasets.c.embedding_dim)
            .where(datasets.c.name == dataset)
            .with_for_update()
        ).one()
        return row.id, row.embedding_dim

    def _insert_run(self, conn: Connection, dataset_id: int, run: RunCommit, now: datetime) -> int:
        result = conn.execute(
            runs.insert().values(
                dataset_id=dataset_id,
                run_id=run.run_id,
                datasource=run.datasource,
                status=RUN_STATUS_COMMITTED,
                conf=run.conf,
                counts=run.counts,
                bytes_read=int(run.bytes_read),
                datasource_bytes=int(run.datasource_bytes),
                started_at=run.started,
                finished_at=now,
            )
        )
        return result.inserted_primary_key[0]

    def _insert_tag(
        self, conn: Connection, dataset_id: int, run_pk: int, run: RunCommit, now: datetime
    ) -> int:
        owner = conn.execute(
            sa.select(runs.c.run_id)
            .join(tags, tags.c.run_pk == runs.c.id)
            .where(tags.c.dataset_id == dataset_id, tags.c.name == run.tag)
        ).scalar_one_or_none()
        if owner is not None:
            raise TagExistsError(
                f"tag {run.tag!r} already exists in dataset {run.dataset!r} (run {owner!r}); "
                f"run {run.run_id!r} needs another tag name"
            )
        result = conn.execute(
            tags.insert().values(dataset_id=dataset_id, run_pk=run_pk, name=run.tag, created_at=now)
        )
        return result.inserted_primary_key[0]

    def _upsert_samples(
        self, conn: Connection, dataset_id: int, run_pk: int, rows: list[dict[str, Any]]
    ) -> None:
        """Insert new samples and overwrite changed ones (same key, new version) in bulk."""
        if not rows:
            return
        stmt = self._insert(samples)
        stmt = stmt.on_conflict_do_update(
            index_elements=["dataset_id", "datasource", "key"],
            set_={
                name: stmt.excluded[name]
                for name in ("etag", "size", "content_hash", "embedding", "metadata", "distance", "run_pk")
            },
        )
        # With RETURNING, SQLAlchemy sends the upsert as multi-row VALUES batches; without it psycopg2 would
        # run one statement per row.
        conn.execute(
            stmt.returning(samples.c.id),
            [{**row, "dataset_id": dataset_id, "run_pk": run_pk} for row in rows],
        ).all()

    def _upsert_datapool(
        self,
        conn: Connection,
        dataset_id: int,
        run_pk: int,
        datasource: str,
        keys: list[str],
        etags: list[str],
    ) -> None:
        """Record every processed object with its etag, so later runs skip it unless it changes.

        PostgreSQL gets the keys and etags as two arrays per statement (unnest), several times faster for
        100k+ objects than per-row parameters; SQLite's native executemany is fast already.
        """
        if not keys:
            return
        common = {"dataset_id": dataset_id, "datasource": datasource, "run_pk": run_pk}
        if self._dialect == "sqlite":
            stmt = _on_datapool_conflict(sqlite.insert(datapool))
            conn.execute(stmt, [{**common, "key": k, "etag": e} for k, e in zip(keys, etags, strict=True)])
            return
        entries = (
            sa.func.unnest(
                sa.bindparam("keys", type_=postgresql.ARRAY(sa.Text)),
                sa.bindparam("etags", type_=postgresql.ARRAY(sa.Text)),
            )
            .table_valued("key", "etag")
            .render_derived(name="entries")
        )
        source = sa.select(
            *(sa.literal(value).label(name) for name, value in common.items()), entries.c.key, entries.c.etag
        )
        stmt = _on_datapool_conflict(
            postgresql.insert(datapool).from_select([*common, "key", "etag"], source)
        )
        for start in range(0, len(keys), _DATAPOOL_CHUNK):
            end = start + _DATAPOOL_CHUNK
            conn.execute(stmt, {"keys": keys[start:end], "etags": etags[start:end]})

    def samples(self, dataset: str) -> pd.DataFrame:
        """One row per sample: key, datasource, etag, size, content_hash, metadata, distance, run_id, tags."""
        query = (
            sa.select(
                samples.c.id,
                samples.c.key,
                samples.c.datasource,
                samples.c.etag,
                samples.c.size,
                samples.c.content_hash,
                samples.c["metadata"],
                samples.c.distance,
                runs.c.run_id,
            )
            .join(datasets, datasets.c.id == samples.c.dataset_id)
            .join(runs, runs.c.id == samples.c.run_pk)
            .where(datasets.c.name == dataset)
            .order_by(samples.c.id)
        )
        tag_query = (
            sa.select(sample_tags.c.sample_id, tags.c.name)
            .join(tags, tags.c.id == sample_tags.c.tag_id)
            .join(datasets, datasets.c.id == tags.c.dataset_id)
            .where(datasets.c.name == dataset)
            .order_by(tags.c.id)
        )
        with self._read() as conn:
            rows = conn.execute(query).all()
            tag_names: dict[int, list[str]] = defaultdict(list)
            for sample_id, name in conn.execute(tag_query):
                tag_names[sample_id].append(name)
        frame = pd.DataFrame(
            [(*row[1:], tag_names.get(row[0], [])) for row in rows], columns=[*SAMPLE_COLUMNS, "tags"]
        )
        return frame.astype({"size": "Int64", "distance": "float64"})

    def tags(self, dataset: str) -> list[TagInfo]:
        """The dataset's tags, oldest first, with how many samples each holds."""
        n_samples = (
            sa.select(sa.func.count(sample_tags.c.sample_id))
            .where(sample_tags.c.tag_id == tags.c.id)
            .scalar_subquery()
        )
        query = (
            sa.select(tags.c.name, runs.c.run_id, n_samples, tags.c.created_at)
            .join(runs, runs.c.id == tags.c.run_pk)
            .join(datasets, datasets.c.id == tags.c.dataset_id)
            .where(datasets.c.name == dataset)
            .order_by(tags.c.id)
        )
        with self._read() as conn:
            return [
                TagInfo(name=name, run_id=run_id, n_samples=int(count), created=_utc(created))
                for name, run_id, count, created in conn.execute(query)
            ]

    def run(self, dataset: str, run_id: str) -> RunInfo | None:
        """The committed run `run_id` of the dataset, or None if it was never committed."""
        query = (
            sa.select(runs, tags.c.name.label("tag"))
            .join(datasets, datasets.c.id == runs.c.dataset_id)
            .outerjoin(tags, tags.c.run_pk == runs.c.id)
            .where(datasets.c.name == dataset, runs.c.run_id == run_id)
        )
        with self._read() as conn:
            row = conn.execute(query).first()
        if row is None:
            return None
        return RunInfo(
            dataset=dataset,
            run_id=row.run_id,
            datasource=row.datasource,
            status=row.status,
            tag=row.tag,
            conf=row.conf,
            counts=row.counts,
            bytes_read=row.bytes_read,
            datasource_bytes=row.datasource_bytes,
            started=_utc(row.started_at),
            finished=_utc(row.finished_at),
        )
