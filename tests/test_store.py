"""The dataset store on SQLite and on a real PostgreSQL server: commits, reads, idempotency, atomicity."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from lightly_tasks import store as store_module
from lightly_tasks.store import (
    DatasetStore,
    EmbeddingDimError,
    RunCommit,
    StoreError,
    TagExistsError,
    redact_db_url,
)

SOURCE = "s3://bucket/images"
DIM = 4


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """A store URL on an empty database: a SQLite file, or a fresh database on the test PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store' / 'store.db'}"
    return request.getfixturevalue("postgres_database_url")


@pytest.fixture
def store(store_url: str) -> Iterator[DatasetStore]:
    opened = DatasetStore(store_url)
    yield opened
    opened.close()


def vector(seed: int, dim: int = DIM) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(dim).astype(np.float32)


def selected_frame(keys: list[str], etag: str = "e1", dim: int = DIM, seed: int = 0) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "key": keys,
            "etag": [f"{etag}-{k}" for k in keys],
            "size": [100 + i for i in range(len(keys))],
            "content_hash": [f"hash-{etag}-{k}" for k in keys],
            "embedding": [vector(seed + i, dim) for i in range(len(keys))],
            "metadata": [{"width": np.int64(64), "luminance": np.float32(0.5), "key": k} for k in keys],
            "distance": [float(i) / 10 for i in range(len(keys))],
        }
    )


def processed_frame(keys: list[str], etag: str = "e1") -> pd.DataFrame:
    return pd.DataFrame({"key": keys, "etag": [f"{etag}-{k}" for k in keys]})


def make_run(
    run_id: str,
    selected: pd.DataFrame,
    processed: pd.DataFrame,
    tag: str | None = None,
    dataset: str = "ds",
    datasource: str = SOURCE,
) -> RunCommit:
    return RunCommit(
        dataset=dataset,
        datasource=datasource,
        run_id=run_id,
        tag=tag or f"tag-{run_id}",
        conf={"n_samples": 3, "secret": "***"},
        selected=selected,
        processed=processed,
        counts={"nProcessed": len(processed), "nSelected": len(selected)},
        bytes_read=1234,
        datasource_bytes=5678,
    )


def snapshot(url: str) -> dict[str, list[tuple]]:
    """Every row of every store table, to show that a failed commit changed nothing."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return {
                table.name: sorted(map(tuple, conn.execute(sa.select(table)).all()), key=repr)
                for table in store_module.metadata.sorted_tables
            }
    finally:
        engine.dispose()


def test_commit_and_read_back(store: DatasetStore) -> None:
    selected = selected_frame(["a.jpg", "b.jpg", "c.jpg"])
    processed = processed_frame(["a.jpg", "b.jpg", "c.jpg", "corrupt.jpg", "dup.jpg"])
    assert store.commit_run(make_run("run1", selected, processed)) is True

    frame = store.samples("ds")
    assert list(frame.columns) == [
        "key",
        "datasource",
        "etag",
        "size",
        "content_hash",
        "metadata",
        "distance",
        "run_id",
        "tags",
    ]
    assert frame["key"].tolist() == ["a.jpg", "b.jpg", "c.jpg"]
    assert frame["datasource"].unique().tolist() == [SOURCE]
    assert frame["etag"].tolist() == ["e1-a.jpg", "e1-b.jpg", "e1-c.jpg"]
    assert frame["size"].tolist() == [100, 101, 102]
    assert frame["distance"].tolist() == pytest.approx([0.0, 0.1, 0.2])
    assert frame["metadata"].iloc[1] == {"width": 64, "luminance": 0.5, "key": "b.jpg"}
    assert frame["run_id"].unique().tolist() == ["run1"]
    assert frame["tags"].tolist() == [["tag-run1"]] * 3

    keys, embeddings = store.embeddings("ds")
    assert keys == ["a.jpg", "b.jpg", "c.jpg"]
    assert embeddings.dtype == np.float32
    np.testing.assert_array_equal(embeddings, np.stack(selected["embedding"].tolist()))

    [tag] = store.tags("ds")
    assert (tag.name, tag.run_id, tag.n_samples) == ("tag-run1", "run1", 3)
    assert tag.created.tzinfo is not None

    run = store.run("ds", "run1")
    assert run is not None
    assert (run.dataset, run.run_id, run.datasource, run.tag) == ("ds", "run1", SOURCE, "tag-run1")
    assert run.conf == {"n_samples": 3, "secret": "***"}
    assert run.counts == {"nProcessed": 5, "nSelected": 3}
    assert (run.bytes_read, run.datasource_bytes) == (1234, 5678)
    assert run.finished.tzinfo is not None
    assert store.run("ds", "other") is None
    assert store.run("other", "run1") is None


def test_unknown_dataset_reads_empty(store: DatasetStore) -> None:
    keys, embeddings = store.existing_embeddings("nope")
    assert keys == [] and embeddings.shape == (0, 0) and embeddings.dtype == np.float32
    assert store.existing_hashes("nope") == set()
    assert store.seen_objects("nope", SOURCE) == {}
    assert store.samples("nope").empty
    assert store.tags("nope") == []


def test_datapool_holds_every_processed_object_per_datasource(store: DatasetStore) -> None:
    store.commit_run(make_run("run1", selected_frame(["a"]), processed_frame(["a", "b", "c"])))
    store.commit_run(
        make_run("run2", selected_frame(["x"]), processed_frame(["x", "a"]), datasource="file:///other")
    )
    assert store.seen_objects("ds", SOURCE) == {"a": "e1-a", "b": "e1-b", "c": "e1-c"}
    assert store.seen_objects("ds", "file:///other") == {"x": "e1-x", "a": "e1-a"}
    assert store.seen_objects("other-dataset", SOURCE) == {}


def test_retried_commit_returns_false_and_writes_nothing(store: DatasetStore, store_url: str) -> None:
    run = make_run("run1", selected_frame(["a", "b"]), processed_frame(["a", "b", "c"]))
    assert store.commit_run(run) is True
    before = snapshot(store_url)
    assert store.commit_run(run) is False
    changed = make_run("run1", selected_frame(["z"]), processed_frame(["z"]), tag="another")
    assert store.commit_run(changed) is False
    assert snapshot(store_url) == before


def test_failure_mid_transaction_leaves_store_unchanged(
    store: DatasetStore, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.commit_run(make_run("run1", selected_frame(["a", "b"]), processed_frame(["a", "b", "c"])))
    before = snapshot(store_url)
    written_before_failure: list[int] = []

    def fail_after_samples(self, conn, *args) -> None:
        written_before_failure.append(
            conn.execute(sa.select(sa.func.count()).select_from(store_module.samples)).scalar_one()
        )
        raise RuntimeError("injected failure")

    monkeypatch.setattr(DatasetStore, "_upsert_datapool", fail_after_samples)
    run2 = make_run(
        "run2", selected_frame(["a", "d", "e"], etag="e2", seed=7), processed_frame(["a", "d", "e"])
    )
    with pytest.raises(RuntimeError, match="injected failure"):
        store.commit_run(run2)
    with pytest.raises(RuntimeError, match="injected failure"):
        store.commit_run(make_run("run1", selected_frame(["q"]), processed_frame(["q"]), dataset="fresh"))
    assert written_before_failure == [4, 3]  # the samples really were written inside the transaction
    assert snapshot(store_url) == before
    assert store.run("ds", "run2") is None

    monkeypatch.undo()
    assert store.commit_run(run2) is True  # the failed run was not recorded, so it can run again
    assert len(store.samples("ds")) == 4


def test_database_error_mid_transaction_leaves_store_unchanged(
    store: DatasetStore, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.commit_run(make_run("run1", selected_frame(["a"]), processed_frame(["a"])))
    before = snapshot(store_url)
    real_entries = store_module._datapool_entries

    def entries_with_null_key(run: RunCommit) -> tuple[list, list]:
        keys, etags = real_entries(run)
        return [*keys, None], [*etags, "x"]

    monkeypatch.setattr(store_module, "_datapool_entries", entries_with_null_key)
    with pytest.raises(sa.exc.IntegrityError):
        store.commit_run(make_run("run2", selected_frame(["b"]), processed_frame(["b"])))
    assert snapshot(store_url) == before


def test_invalid_frames_are_rejected_before_writing(store: DatasetStore, store_url: str) -> None:
    before = snapshot(store_url)
    with pytest.raises(ValueError, match="without a key"):
        store.commit_run(
            make_run("r", selected_frame(["a"]), pd.DataFrame({"key": ["a", None], "etag": "x"}))
        )
    with pytest.raises(ValueError, match="duplicate keys"):
        store.commit_run(make_run("r", selected_frame(["a"]), processed_frame(["a", "a"])))
    with pytest.raises(ValueError, match="lacks columns"):
        store.commit_run(
            make_run("r", selected_frame(["a"]).drop(columns="embedding"), processed_frame(["a"]))
        )
    assert snapshot(store_url) == before


def test_changed_object_is_updated_and_tagged_again(store: DatasetStore) -> None:
    store.commit_run(make_run("run1", selected_frame(["a", "b"]), processed_frame(["a", "b"])))
    changed = selected_frame(["a"], etag="e2", seed=42)
    changed.at[0, "metadata"] = {"width": 128}
    store.commit_run(make_run("run2", changed, processed_frame(["a", "n"], etag="e2")))

    frame = store.samples("ds").set_index("key")
    assert len(frame) == 2
    assert frame.loc["a", "etag"] == "e2-a"
    assert frame.loc["a", "metadata"] == {"width": 128}
    assert frame.loc["a", "run_id"] == "run2"
    assert frame.loc["a", "tags"] == ["tag-run1", "tag-run2"]
    assert frame.loc["b", "tags"] == ["tag-run1"]
    keys, embeddings = store.embeddings("ds")
    np.testing.assert_array_equal(embeddings[keys.index("a")], vector(42))
    assert store.seen_objects("ds", SOURCE) == {"a": "e2-a", "b": "e1-b", "n": "e2-n"}
    assert [(t.name, t.n_samples) for t in store.tags("ds")] == [("tag-run1", 2), ("tag-run2", 1)]


def test_tag_name_is_unique_per_dataset(store: DatasetStore, store_url: str) -> None:
    store.commit_run(make_run("run1", selected_frame(["a"]), processed_frame(["a"]), tag="weekly"))
    before = snapshot(store_url)
    with pytest.raises(TagExistsError, match=r"tag 'weekly' already exists in dataset 'ds' \(run 'run1'\)"):
        store.commit_run(make_run("run2", selected_frame(["b"]), processed_frame(["b"]), tag="weekly"))
    assert snapshot(store_url) == before
    assert store.commit_run(make_run("run2", selected_frame(["b"]), processed_frame(["b"]), tag="weekly-2"))
    other_dataset = make_run(
        "run1", selected_frame(["b"]), processed_frame(["b"]), tag="weekly", dataset="other"
    )
    assert store.commit_run(other_dataset)


def test_embedding_dim_must_match_the_dataset(store: DatasetStore, store_url: str) -> None:
    store.commit_run(make_run("run1", selected_frame(["a"], dim=4), processed_frame(["a"])))
    before = snapshot(store_url)
    with pytest.raises(EmbeddingDimError, match="'ds' holds 4-dim embeddings; run 'run2' brings 8-dim"):
        store.commit_run(make_run("run2", selected_frame(["b"], dim=8), processed_frame(["b"])))
    mixed = pd.concat([selected_frame(["c"], dim=4), selected_frame(["d"], dim=8)], ignore_index=True)
    with pytest.raises(EmbeddingDimError, match="mixed dims"):
        store.commit_run(make_run("run3", mixed, processed_frame(["c", "d"])))
    assert snapshot(store_url) == before


def test_existing_embeddings_and_hashes_span_runs(store: DatasetStore) -> None:
    first, second = selected_frame(["a", "b"]), selected_frame(["c"], etag="e9", seed=5)
    store.commit_run(make_run("run1", first, processed_frame(["a", "b", "x"])))
    store.commit_run(make_run("run2", second, processed_frame(["c"])))
    keys, embeddings = store.existing_embeddings("ds")
    assert keys == ["a", "b", "c"]
    assert embeddings.shape == (3, DIM)
    np.testing.assert_array_equal(embeddings, np.stack([*first["embedding"], *second["embedding"]]))
    assert store.existing_hashes("ds") == {"hash-e1-a", "hash-e1-b", "hash-e9-c"}


def test_empty_selection_still_records_run_tag_and_datapool(store: DatasetStore) -> None:
    assert store.commit_run(make_run("run1", selected_frame([]), processed_frame(["a", "b"])))
    assert [(t.name, t.n_samples) for t in store.tags("ds")] == [("tag-run1", 0)]
    assert store.seen_objects("ds", SOURCE) == {"a": "e1-a", "b": "e1-b"}
    assert store.existing_embeddings("ds")[1].shape == (0, 0)


def test_concurrent_commits_of_one_dataset(store_url: str) -> None:
    stores = [DatasetStore(store_url) for _ in range(4)]
    results: dict[str, bool] = {}
    errors: list[BaseException] = []

    def commit(index: int, run: RunCommit) -> None:
        try:
            results[f"{run.run_id}#{index}"] = stores[index].commit_run(run)
        except BaseException as exc:
            errors.append(exc)

    runs = [
        make_run(
            f"run{i}", selected_frame([f"s{i}", "shared"], etag=f"e{i}"), processed_frame([f"p{i}", "pool"])
        )
        for i in range(4)
    ]
    threads = [threading.Thread(target=commit, args=(i, run)) for i, run in enumerate(runs)]
    threads += [threading.Thread(target=commit, args=(i, runs[0])) for i in range(1, 4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == []
        assert sum(results.values()) == 4  # the three retries of run0 all lost to the first
        assert sorted(t.name for t in stores[0].tags("ds")) == [f"tag-run{i}" for i in range(4)]
        frame = stores[0].samples("ds")
        assert sorted(frame["key"]) == ["s0", "s1", "s2", "s3", "shared"]
        assert len(frame.set_index("key").loc["shared", "tags"]) == 4
        assert set(stores[0].seen_objects("ds", SOURCE)) == {"p0", "p1", "p2", "p3", "pool"}
    finally:
        for opened in stores:
            opened.close()


def test_large_commit_is_bulk(store: DatasetStore) -> None:
    n_processed, n_selected = 100_000, 5_000
    keys = [f"images/{i:07d}.jpg" for i in range(n_processed)]
    rng = np.random.default_rng(0)
    selected = pd.DataFrame(
        {
            "key": keys[:n_selected],
            "etag": "etag",
            "size": 1000,
            "content_hash": [f"h{i}" for i in range(n_selected)],
            "embedding": list(rng.standard_normal((n_selected, 64)).astype(np.float32)),
            "metadata": [{"width": 640} for _ in range(n_selected)],
            "distance": rng.random(n_selected),
        }
    )
    processed = pd.DataFrame({"key": keys, "etag": "etag"})
    started = time.perf_counter()
    assert store.commit_run(make_run("big", selected, processed))
    print(f"commit of {n_processed} processed / {n_selected} selected: {time.perf_counter() - started:.1f} s")
    assert len(store.seen_objects("ds", SOURCE)) == n_processed
    assert store.existing_embeddings("ds")[1].shape == (n_selected, 64)


def test_sqlite_uses_wal_and_foreign_keys(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'wal.db'}"
    DatasetStore(url).close()
    DatasetStore(url).close()  # opening an existing store is fine
    engine = DatasetStore(url)._engine
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    engine.dispose()


def test_many_connections_opening_a_new_sqlite_store_at_once(tmp_path) -> None:
    """Opening a fresh file together (the WAL switch needs an exclusive lock) never fails with "locked"."""
    errors: list[BaseException] = []
    for trial in range(10):
        url = f"sqlite:///{tmp_path / f'new{trial}.db'}"
        barrier = threading.Barrier(8)

        def open_store(url: str = url, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            try:
                DatasetStore(url).close()
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=open_store) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []


def test_errors_and_repr_hide_the_password() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"postgresql+psycopg2://curator:s3cr3t-pw@127.0.0.1:{port}/store"
    with pytest.raises(StoreError) as info:
        DatasetStore(url)
    assert "s3cr3t-pw" not in str(info.value)
    assert "curator:***@127.0.0.1" in str(info.value)
    assert redact_db_url(url) == f"postgresql+psycopg2://curator:***@127.0.0.1:{port}/store"
    with pytest.raises(StoreError, match="supports sqlite and postgresql") as info:
        DatasetStore("mysql://u:s3cr3t-pw@host/db")
    assert "s3cr3t-pw" not in str(info.value)
