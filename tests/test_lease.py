"""The dataset lease: one curation of a dataset at a time, on SQLite and on a real PostgreSQL server.

The races are real: several threads, each with its own ``DatasetStore`` (own engine and connections), start at
one barrier and try to take the same dataset's lease through the database at once.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from lightly_tasks import pipeline
from lightly_tasks.config import parse_config
from lightly_tasks.demo_data import add_images
from lightly_tasks.storage import location_from_uri
from lightly_tasks.store import SELECTED_COLUMNS, DatasetBusyError, DatasetStore, RunCommit

RACERS = 8


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return request.getfixturevalue("postgres_database_url")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[DatasetStore]:
    """A SQLite store for the single-connection rules; the races below run on both databases."""
    opened = DatasetStore(f"sqlite:///{tmp_path / 'store.db'}")
    yield opened
    opened.close()


def _commit(run_id: str, keys: list[str]) -> RunCommit:
    return RunCommit(
        dataset="ds",
        datasource="s3://bucket/raw",
        run_id=run_id,
        tag=f"tag-{run_id}",
        conf={},
        selected=pd.DataFrame(columns=list(SELECTED_COLUMNS)),
        processed=pd.DataFrame({"key": keys, "etag": [f"e-{k}" for k in keys]}),
        counts={},
        bytes_read=0,
        datasource_bytes=0,
    )


def _race(n: int, attempt) -> tuple[list[object], list[BaseException]]:
    """Run ``attempt(i)`` in ``n`` threads released together; return the results and the exceptions."""
    barrier = threading.Barrier(n)
    results: list[object] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run(i: int) -> None:
        barrier.wait()
        try:
            value = attempt(i)
        except BaseException as exc:  # collected and asserted on by the caller
            with lock:
                errors.append(exc)
        else:
            with lock:
                results.append(value)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results, errors


def test_acquire_renew_release(store: DatasetStore) -> None:
    lease = store.acquire_lease("ds", "run-a", ttl_seconds=60)
    assert store.lease("ds") == lease and lease.holder == "run-a"
    renewed = store.acquire_lease("ds", "run-a", ttl_seconds=120)
    assert renewed.acquired == lease.acquired and renewed.expires > lease.expires
    with pytest.raises(DatasetBusyError, match="curated by run 'run-a'"):
        store.acquire_lease("ds", "run-b", ttl_seconds=60)
    assert store.release_lease("ds", "run-b") is False  # only the holder releases
    assert store.release_lease("ds", "run-a") is True
    assert store.lease("ds") is None and store.lease("unknown") is None
    assert store.acquire_lease("ds", "run-b", ttl_seconds=60).holder == "run-b"


def test_an_expired_lease_is_taken_over(store: DatasetStore) -> None:
    past = datetime.now(UTC) - timedelta(hours=2)
    store.acquire_lease("ds", "dead-run", ttl_seconds=60, now=past)
    assert store.lease("ds") is None
    assert store.acquire_lease("ds", "run-b", ttl_seconds=60).holder == "run-b"


def test_exactly_one_of_racing_runs_gets_the_lease(store_url: str) -> None:
    for round_ in range(3):
        stores = [DatasetStore(store_url) for _ in range(RACERS)]
        try:
            dataset = f"ds-{round_}"
            results, errors = _race(
                RACERS,
                lambda i, stores=stores, dataset=dataset: stores[i]
                .acquire_lease(dataset, f"run-{i}", ttl_seconds=60)
                .holder,
            )
        finally:
            for s in stores:
                s.close()
        assert len(results) == 1, (results, errors)
        assert len(errors) == RACERS - 1 and all(isinstance(e, DatasetBusyError) for e in errors), errors
        assert all(f"curated by run {results[0]!r}" in str(e) for e in errors)


def test_a_commit_after_losing_the_lease_writes_nothing(store: DatasetStore) -> None:
    past = datetime.now(UTC) - timedelta(hours=2)
    store.acquire_lease("ds", "slow-run", ttl_seconds=60, now=past)  # it expired while the run was working
    store.acquire_lease("ds", "new-run", ttl_seconds=60)
    with pytest.raises(DatasetBusyError, match="does not hold the lease"):
        store.commit_run(_commit("slow-run", ["a", "b"]), lease_holder="slow-run")
    assert store.seen_objects("ds", "s3://bucket/raw") == {} and store.run("ds", "slow-run") is None
    assert store.commit_run(_commit("new-run", ["a", "b"]), lease_holder="new-run") is True
    assert store.lease("ds") is None  # released in the commit's transaction
    assert set(store.seen_objects("ds", "s3://bucket/raw")) == {"a", "b"}
    with pytest.raises(DatasetBusyError, match="now free"):  # the slow run still cannot commit
        store.commit_run(_commit("slow-run", ["a", "b"]), lease_holder="slow-run")
    assert store.commit_run(_commit("new-run", ["a", "b"]), lease_holder="new-run") is False  # a retry


def test_an_expired_lease_that_nobody_took_still_lets_its_holder_commit(store: DatasetStore) -> None:
    store.acquire_lease("ds", "slow-run", ttl_seconds=60, now=datetime.now(UTC) - timedelta(hours=2))
    assert store.commit_run(_commit("slow-run", ["a"]), lease_holder="slow-run") is True
    assert store.lease("ds") is None


def test_racing_commits_of_the_lease_holder_and_a_usurper(store_url: str) -> None:
    """Only the holder's commit lands, whatever the order of the two transactions (its commit frees the lease,
    and a free lease is no licence to commit)."""
    setup = DatasetStore(store_url)
    setup.acquire_lease("ds", "run-0", ttl_seconds=60)
    setup.close()
    stores = [DatasetStore(store_url) for _ in range(2)]
    try:
        results, errors = _race(
            2, lambda i: stores[i].commit_run(_commit(f"run-{i}", ["a"]), lease_holder=f"run-{i}")
        )
        assert results == [True]
        [error] = errors
        assert isinstance(error, DatasetBusyError) and "run-1" in str(error)
        assert stores[0].run("ds", "run-0") is not None and stores[0].run("ds", "run-1") is None
    finally:
        for s in stores:
            s.close()


def _context(tmp_path: Path, folder: Path, store_url: str, run_id: str) -> pipeline.RunContext:
    config = parse_config(
        {
            "datasource": {"uri": folder.as_uri()},
            "dataset": "ds",
            "artifacts_root": (tmp_path / "artifacts").as_uri(),
            "store_url": store_url,
        }
    )
    return pipeline.RunContext(
        config=config,
        run_id=run_id,
        datasource=location_from_uri(config.datasource.uri),
        artifacts=location_from_uri(config.artifacts_root),
    )


def test_two_curation_runs_racing_on_one_dataset(tmp_path: Path, store_url: str) -> None:
    folder = tmp_path / "images"
    add_images(folder, n_images=2, seed=5)
    contexts = [_context(tmp_path, folder, store_url, f"manual__run-{i}") for i in range(2)]
    results, errors = _race(2, lambda i: (contexts[i].run_id, pipeline.list_stage(contexts[i])))
    [(winner, listing)] = results
    [error] = errors
    assert isinstance(error, DatasetBusyError) and winner in str(error)
    assert listing["n_objects"] == 2
    store = DatasetStore(store_url)
    try:
        assert store.lease("ds").holder == winner
        loser = next(c for c in contexts if c.run_id != winner)
        assert pipeline.release_stage(loser) is False  # the loser's teardown leaves the winner's lease alone
        assert store.lease("ds").holder == winner
        assert pipeline.release_stage(next(c for c in contexts if c.run_id == winner)) is True
        assert store.lease("ds") is None
    finally:
        store.close()


def test_a_failed_listing_releases_the_lease(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    ctx = _context(tmp_path, tmp_path / "no such folder", url, "manual__run")
    with pytest.raises(FileNotFoundError):
        pipeline.list_stage(ctx)
    store = DatasetStore(url)
    try:
        assert store.lease("ds") is None
    finally:
        store.close()
