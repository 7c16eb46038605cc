"""The curation stages as plain functions: each reads earlier artifacts, writes its own, returns a manifest.

A manifest is a small JSON-able dict (artifact URIs, counts, bytes read, seconds) that the DAG passes through
XCom. Every stage is idempotent: a retry overwrites the stage's own artifacts and nothing else, and only
``upload`` writes to the dataset store, in one transaction, with the datapool last.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from lightly_tasks import artifacts
from lightly_tasks.config import RunConfig
from lightly_tasks.decoding import decode_shard, iter_cache
from lightly_tasks.embedding import build_model, embed
from lightly_tasks.report import build_report, dump_selected, embeddings_csv, write_filenames
from lightly_tasks.selection import StoppingCondition, kcenter_greedy
from lightly_tasks.storage import ByteCounter, Location, list_objects, location_from_uri
from lightly_tasks.store import DatasetStore, RunCommit

log = logging.getLogger(__name__)

OBJECTS_PER_AUTO_SHARD = 2000
MAX_AUTO_SHARDS = 64
Manifest = dict[str, Any]


@dataclass(frozen=True)
class RunContext:
    """One run's configuration and resolved locations.

    ``resolve`` turns a URI (checkpoint, dump output) into a :class:`Location`; the Airflow side passes one that
    applies connections, plain Python uses fsspec's defaults.
    """

    config: RunConfig
    run_id: str
    datasource: Location
    artifacts: Location
    resolve: Callable[[str], Location] = field(default=location_from_uri)

    @property
    def run(self) -> Location:
        """``<artifacts_root>/<dataset>/runs/<run_id>``."""
        return artifacts.run_location(self.artifacts, self.config.dataset, self.run_id)

    @property
    def datasource_id(self) -> str:
        """The datasource as the datapool records it: its URI without credentials or trailing slash."""
        return self.datasource.uri.rstrip("/")

    @property
    def tag(self) -> str:
        """Name of the tag that this run's selected samples get."""
        return f"selected_{artifacts.safe_run_id(self.run_id)}"

    def store(self) -> DatasetStore:
        return DatasetStore(self.config.store_url)


def _shard_count(config: RunConfig, n_objects: int) -> int:
    if config.num_shards:
        return max(1, min(config.num_shards, n_objects))
    return max(1, min(MAX_AUTO_SHARDS, math.ceil(n_objects / OBJECTS_PER_AUTO_SHARD)))


def list_stage(ctx: RunContext) -> Manifest:
    """List the datasource, drop what the datapool has seen (same key and etag), split the rest into shards."""
    started = time.monotonic()
    cfg = ctx.config
    listed = list_objects(ctx.datasource)
    store = ctx.store()
    try:
        seen = {} if cfg.datasource.process_all else store.seen_objects(cfg.dataset, ctx.datasource_id)
    finally:
        store.close()
    is_new = [seen.get(k) != e for k, e in zip(listed["key"], listed["etag"], strict=True)]
    todo = listed[is_new].reset_index(drop=True)
    n_shards = _shard_count(cfg, len(todo))
    todo["shard"] = (np.arange(len(todo)) * n_shards // max(len(todo), 1)).astype("int64")
    uri = artifacts.write_table(ctx.run, "list/objects.parquet", todo)
    log.info(
        "listed %d objects (%d bytes) in %s; %d already in the datapool; %d to process in %d shard(s)",
        len(listed), int(listed["size"].sum()), ctx.datasource.uri, len(listed) - len(todo), len(todo), n_shards,
    )
    if listed.empty:
        log.warning("datasource %s holds no %s: the run will select nothing", ctx.datasource.uri, cfg.input_type)
    return {
        "stage": "list",
        "objects_uri": uri,
        "n_listed": len(listed),
        "n_seen": len(listed) - len(todo),
        "n_objects": len(todo),
        "listed_bytes": int(listed["size"].sum()),
        "datasource_bytes": int(todo["size"].sum()),
        "shards": list(range(n_shards)),
        "bytes_read": 0,
        "seconds": round(time.monotonic() - started, 3),
    }


def per_shard(listing: Manifest) -> list[Manifest]:
    """One manifest per shard (the listing's figures plus ``shard``), the list a mapped task expands over."""
    summary = {k: v for k, v in listing.items() if k != "shards"}
    return [{**summary, "shard": shard} for shard in listing["shards"]]


def _shard_objects(ctx: RunContext, shard: int) -> pd.DataFrame:
    objects = artifacts.read_table(ctx.run, "list/objects.parquet")
    return objects[objects["shard"] == shard].reset_index(drop=True)


def corruptness_stage(ctx: RunContext, shard: int, *, workers: int = 4) -> Manifest:
    """The one decoding pass over a shard: verdicts, content hashes, metadata and the decoded cache."""
    started = time.monotonic()
    objects = _shard_objects(ctx, shard)
    cache = ctx.run.child("cache", f"shard-{shard:05d}")
    artifacts.remove(ctx.run, f"cache/shard-{shard:05d}")  # a retry must not leave parts of an earlier attempt
    counter = ByteCounter()
    table = decode_shard(
        ctx.datasource,
        objects,
        cache,
        image_size=ctx.config.embedding.image_size,
        counter=counter,
        workers=workers,
    )
    uri = artifacts.write_table(ctx.run, f"corruptness/shard-{shard:05d}.parquet", table)
    n_corrupt = int((table["verdict"] != "ok").sum()) if len(table) else 0
    return {
        "stage": "corruptness",
        "shard": shard,
        "table_uri": uri,
        "n_objects": len(table),
        "n_ok": len(table) - n_corrupt,
        "n_corrupt": n_corrupt,
        "bytes_read": counter.total,
        "seconds": round(time.monotonic() - started, 3),
    }


def _read_uri_bytes(ctx: RunContext, uri: str) -> bytes:
    location = ctx.resolve(uri)
    with location.fs.open(location.root, "rb") as f:
        return f.read()


def embedding_stage(ctx: RunContext, shard: int) -> Manifest:
    """Embed a shard's decoded cache; writes ``embedding/shard-N.parquet`` (key, embedding)."""
    started = time.monotonic()
    cfg = ctx.config
    table = artifacts.read_table(ctx.run, f"corruptness/shard-{shard:05d}.parquet")
    ok = table[table["verdict"] == "ok"].sort_values(["cache_part", "cache_row"], kind="stable")
    checkpoint = _read_uri_bytes(ctx, cfg.embedding.checkpoint) if cfg.embedding.checkpoint else None
    model = build_model(cfg.embedding.model, checkpoint)
    cache = ctx.run.child("cache", f"shard-{shard:05d}")
    vectors = embed(model, iter_cache(cache, ok), total=len(ok), batch_size=cfg.batch_size)
    keys = ok["key"].tolist()
    uri = artifacts.write_table(
        ctx.run, f"embedding/shard-{shard:05d}.parquet", artifacts.embeddings_table(keys, vectors)
    )
    seconds = time.monotonic() - started
    return {
        "stage": "embedding",
        "shard": shard,
        "embeddings_uri": uri,
        "n_embedded": len(keys),
        "dim": int(vectors.shape[1]) if len(keys) else 0,
        "images_per_second": round(len(keys) / seconds, 2) if seconds else None,
        "bytes_read": 0,
        "seconds": round(seconds, 3),
    }


def _all_shards(ctx: RunContext, shards: Sequence[int]) -> tuple[pd.DataFrame, list[str], np.ndarray]:
    tables = [artifacts.read_table(ctx.run, f"corruptness/shard-{s:05d}.parquet") for s in shards]
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    keys: list[str] = []
    blocks: list[np.ndarray] = []
    for s in shards:
        k, v = artifacts.read_embeddings(ctx.run, f"embedding/shard-{s:05d}.parquet")
        if k:
            keys.extend(k)
            blocks.append(v)
    vectors = np.concatenate(blocks) if blocks else np.zeros((0, 0), np.float32)
    return table, keys, vectors


def selection_stage(ctx: RunContext, shards: Sequence[int]) -> Manifest:
    """Remove exact duplicates, then k-center greedy with the dataset's samples as the initial centres.

    Writes ``selection/objects.parquet``: every processed object with its ``status`` (selected, not_selected,
    corrupt, duplicate, in_dataset), ``reason``, the ``distance`` that chose it and its pick ``order``.
    """
    started = time.monotonic()
    cfg = ctx.config
    table, keys, vectors = _all_shards(ctx, shards)
    store = ctx.store()
    try:
        existing = store.samples(cfg.dataset)
        existing_keys, existing_vectors = store.existing_embeddings(cfg.dataset)
    finally:
        store.close()
    if table.empty:
        table = pd.DataFrame(columns=["key", "etag", "size", "verdict", "reason", "content_hash"])
    table = table.sort_values("key", kind="stable").reset_index(drop=True)
    status = np.where(table["verdict"] == "ok", "candidate", "corrupt").astype(object)
    reason = table["reason"].astype(object).where(table["verdict"] != "ok", None).to_numpy(copy=True)

    # Objects that already are samples of this dataset with the same etag (process_all) are not re-selected.
    same_source = existing[existing["datasource"] == ctx.datasource_id] if len(existing) else existing
    in_dataset = set(zip(same_source.get("key", []), same_source.get("etag", []), strict=True))
    for i, (k, e) in enumerate(zip(table["key"], table["etag"], strict=True)):
        if status[i] == "candidate" and (k, e) in in_dataset:
            status[i], reason[i] = "in_dataset", "already a sample of the dataset"

    if cfg.remove_exact_duplicates:
        known: dict[str, str] = {}
        if len(existing):
            for k, h in zip(existing["key"], existing["content_hash"], strict=True):
                if h:
                    known.setdefault(h, f"dataset sample {k}")
        for i, (k, h) in enumerate(zip(table["key"], table["content_hash"], strict=True)):
            if status[i] == "in_dataset":
                known.setdefault(h, f"dataset sample {k}")
        for i, (k, h) in enumerate(zip(table["key"], table["content_hash"], strict=True)):
            if status[i] != "candidate":
                continue
            if h in known:
                status[i], reason[i] = "duplicate", f"exact duplicate of {known[h]}"
            else:
                known[h] = k

    row_of = {k: i for i, k in enumerate(keys)}
    candidate_keys = [k for k, s in zip(table["key"], status, strict=True) if s == "candidate"]
    candidate_vectors = vectors[[row_of[k] for k in candidate_keys]] if candidate_keys else None
    stop = StoppingCondition(
        n_samples=cfg.stopping_condition.n_samples,
        proportion_samples=cfg.stopping_condition.proportion_samples,
        min_distance=cfg.stopping_condition.min_distance,
    )
    if cfg.stopping_condition.n_samples and cfg.stopping_condition.n_samples > len(candidate_keys):
        log.warning(
            "stopping_condition.n_samples=%d but only %d candidates: selecting all of them",
            cfg.stopping_condition.n_samples, len(candidate_keys),
        )
    if candidate_vectors is not None and len(existing_vectors) and existing_vectors.shape[1] != candidate_vectors.shape[1]:
        raise ValueError(
            f"dataset {cfg.dataset!r} holds {existing_vectors.shape[1]}-d embeddings but this run's model gives "
            f"{candidate_vectors.shape[1]}-d: use the dataset's embedding model or a new dataset"
        )
    distance = np.full(len(table), np.nan, dtype=np.float32)
    order = np.full(len(table), -1, dtype=np.int64)
    stopped_by = "exhausted"
    if candidate_keys:
        picked = kcenter_greedy(
            candidate_vectors, existing=existing_vectors if len(existing_vectors) else None, stop=stop
        )
        stopped_by = picked.stopped_by
        position = {k: i for i, k in enumerate(table["key"])}
        for rank, (index, dist) in enumerate(zip(picked.indices, picked.distances, strict=True)):
            i = position[candidate_keys[int(index)]]
            status[i], distance[i], order[i] = "selected", dist, rank
    status = np.where(status == "candidate", "not_selected", status)
    result = table.assign(status=status, reason=reason, distance=distance, order=order)
    uri = artifacts.write_table(ctx.run, "selection/objects.parquet", result)
    counts = result["status"].value_counts().to_dict()
    log.info("selection: %s (stopped by %s)", counts, stopped_by)
    return {
        "stage": "selection",
        "objects_uri": uri,
        "n_candidates": len(candidate_keys),
        "n_selected": int(counts.get("selected", 0)),
        "n_corrupt": int(counts.get("corrupt", 0)),
        "n_duplicate": int(counts.get("duplicate", 0)),
        "n_in_dataset": int(counts.get("in_dataset", 0)),
        "n_existing": len(existing_keys),
        "stopped_by": stopped_by,
        "bytes_read": 0,
        "seconds": round(time.monotonic() - started, 3),
    }


METADATA_EXCLUDED = {
    "key", "etag", "size", "last_modified", "shard", "verdict", "reason", "content_hash", "cache_part",
    "cache_row", "status", "distance", "order",
}


def metadata_stage(ctx: RunContext) -> Manifest:
    """The metadata table of the selected samples (computed in the decoding pass; nothing is re-read)."""
    started = time.monotonic()
    objects = artifacts.read_table(ctx.run, "selection/objects.parquet")
    selected = objects[objects["status"] == "selected"].sort_values("order")
    columns = ["key", *[c for c in objects.columns if c not in METADATA_EXCLUDED]]
    uri = artifacts.write_table(ctx.run, "metadata/metadata.parquet", selected[columns])
    return {
        "stage": "metadata",
        "metadata_uri": uri,
        "n_samples": len(selected),
        "fields": columns[1:],
        "bytes_read": 0,
        "seconds": round(time.monotonic() - started, 3),
    }


def _stage_figures(manifests: Sequence[Manifest]) -> dict[str, Any]:
    return {
        "bytesRead": int(sum(m.get("bytes_read", 0) for m in manifests)),
        "seconds": round(sum(m.get("seconds", 0.0) for m in manifests), 3),
        "tasks": len(manifests),
    }


def upload_stage(
    ctx: RunContext,
    *,
    listing: Manifest,
    decoded: Sequence[Manifest],
    embedded: Sequence[Manifest],
    selection: Manifest,
    metadata: Manifest,
) -> Manifest:
    """Dump, exports, the store transaction (samples, tag, run, datapool) and ``report.json``.

    The store commit is one transaction and is skipped when this run was already committed, so a retried
    upload changes nothing twice. The decoded cache is deleted afterwards unless ``keep_cache``.
    """
    started = time.monotonic()
    cfg = ctx.config
    objects = artifacts.read_table(ctx.run, "selection/objects.parquet")
    selected = objects[objects["status"] == "selected"].sort_values("order")
    shards = [m["shard"] for m in decoded]
    _, keys, vectors = _all_shards(ctx, shards)
    row_of = {k: i for i, k in enumerate(keys)}
    selected_vectors = vectors[[row_of[k] for k in selected["key"]]] if len(selected) else np.zeros((0, 0))
    meta = artifacts.read_table(ctx.run, "metadata/metadata.parquet").set_index("key")

    counter = ByteCounter()
    outputs: dict[str, str] = {}
    if cfg.dump.output:
        output = ctx.resolve(cfg.dump.output)
        dump_selected(ctx.datasource, output, selected["key"].tolist(), counter)
        outputs["dump"] = output.uri

    run = ctx.run
    by_status = {s: objects.loc[objects["status"] == s, "key"].tolist() for s in ("corrupt", "duplicate")}
    outputs["selected_filenames"] = write_filenames(run, "selected", selected["key"].tolist())
    outputs["corrupt_filenames"] = write_filenames(run, "corrupt", by_status["corrupt"])
    outputs["duplicate_filenames"] = write_filenames(run, "duplicate", by_status["duplicate"])
    outputs["embeddings_csv"] = artifacts.write_bytes(
        run, "data/embeddings.csv", embeddings_csv(selected["key"].tolist(), selected_vectors)
    )
    corrupt = objects[objects["status"] == "corrupt"]
    outputs["corrupt_reasons"] = artifacts.write_table(run, "corruptness/corrupt.parquet", corrupt[["key", "reason"]])

    # Objects that vanished or could not be read are left out of the datapool so the next run retries them.
    unreadable = objects["reason"].fillna("").str.startswith(("missing:", "read error:"))
    processed = objects.loc[~unreadable, ["key", "etag"]]
    samples = pd.DataFrame(
        {
            "key": selected["key"].tolist(),
            "etag": selected["etag"].tolist(),
            "size": selected["size"].astype("int64").tolist(),
            "content_hash": selected["content_hash"].tolist(),
            "embedding": list(selected_vectors.astype(np.float32)),
            "metadata": [_json_metadata(meta.loc[k]) for k in selected["key"]],
            "distance": [None if not np.isfinite(d) else float(d) for d in selected["distance"]],
        }
    )
    counts = {
        "nInput": int(listing["n_objects"]),
        "nListed": int(listing["n_listed"]),
        "nSkippedSeen": int(listing["n_seen"]),
        "nCorrupt": int(selection["n_corrupt"]),
        "nDuplicate": int(selection["n_duplicate"]),
        "nInDataset": int(selection["n_in_dataset"]),
        "nSelected": int(selection["n_selected"]),
        "nDatasetBefore": int(selection["n_existing"]),
    }
    stages = {
        "list": _stage_figures([listing]),
        "corruptness": _stage_figures(decoded),
        "embedding": _stage_figures(embedded),
        "selection": _stage_figures([selection]),
        "metadata": _stage_figures([metadata]),
    }
    upload_figures = {"bytesRead": counter.total, "seconds": 0.0, "tasks": 1}
    stages["upload"] = upload_figures
    bytes_read = sum(s["bytesRead"] for s in stages.values())
    store = ctx.store()
    try:
        committed = store.commit_run(
            RunCommit(
                dataset=cfg.dataset,
                datasource=ctx.datasource_id,
                run_id=ctx.run_id,
                tag=ctx.tag,
                conf=cfg.redacted(),
                selected=samples,
                processed=processed,
                counts=counts,
                bytes_read=bytes_read,
                datasource_bytes=int(listing["datasource_bytes"]),
            )
        )
        n_after = len(store.samples(cfg.dataset))
    finally:
        store.close()
    if not committed:
        log.warning("run %s of dataset %s was already committed; the store is unchanged", ctx.run_id, cfg.dataset)
    counts["nDatasetAfter"] = n_after
    upload_figures["seconds"] = round(time.monotonic() - started, 3)
    report = build_report(
        dataset=cfg.dataset,
        run_id=ctx.run_id,
        config=cfg.redacted(),
        counts=counts,
        stages=stages,
        datasource_bytes=int(listing["datasource_bytes"]),
        outputs=outputs,
        selection={
            "tag": ctx.tag,
            "stoppedBy": selection["stopped_by"],
            "nCandidates": selection["n_candidates"],
            "distances": [None if not np.isfinite(d) else round(float(d), 6) for d in selected["distance"]],
        },
    )
    report_uri = artifacts.write_json(run, "report.json", report)
    if not cfg.keep_cache:
        artifacts.remove(run, "cache")
    log.info(
        "run %s: %d input, %d corrupt, %d duplicates, %d selected; read %d of %d datasource bytes; report %s",
        ctx.run_id, counts["nInput"], counts["nCorrupt"], counts["nDuplicate"], counts["nSelected"],
        report["traffic"]["bytesRead"], report["traffic"]["datasourceBytes"], report_uri,
    )
    return {
        "stage": "upload",
        "report_uri": report_uri,
        "committed": committed,
        "counts": counts,
        "traffic": report["traffic"],
        "outputs": outputs,
        "bytes_read": counter.total,
        "seconds": upload_figures["seconds"],
    }


def _json_metadata(row: pd.Series) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in row.items():
        if value is None or (isinstance(value, float) and not np.isfinite(value)):
            continue
        out[str(name)] = value.item() if isinstance(value, np.generic) else value
    return out
