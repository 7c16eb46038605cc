"""The curation stages as plain functions: each reads earlier artifacts, writes its own, returns a manifest.

A manifest is a small JSON-able dict (artifact URIs, counts, bytes read, seconds) that the DAG passes through
XCom. Every stage is idempotent: a retry overwrites the stage's own artifacts and nothing else, and only
``upload`` writes to the dataset store, in one transaction, with the datapool last.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from lightly_tasks import artifacts
from lightly_tasks.config import RunConfig, redact_uri
from lightly_tasks.decoding import cache_parts, decode_shard, iter_cache
from lightly_tasks.report import build_report, dump_selected, embeddings_csv, write_filenames
from lightly_tasks.storage import IMAGE_EXTENSIONS, ByteCounter, Location, location_from_uri
from lightly_tasks.store import DatasetStore, RunCommit
from lightly_tasks.windows import RunWindow, list_window

log = logging.getLogger(__name__)

OBJECTS_PER_AUTO_SHARD = 2000
VIDEOS_PER_AUTO_SHARD = 50
MAX_AUTO_SHARDS = 64
RUN_LEASE_SECONDS = 12 * 3600
"""How long a run's lease on its dataset lasts; it only matters when a run dies without its teardown."""
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
    per_shard = VIDEOS_PER_AUTO_SHARD if config.input_type == "videos" else OBJECTS_PER_AUTO_SHARD
    return max(1, min(MAX_AUTO_SHARDS, math.ceil(n_objects / per_shard)))


def extensions_for(input_type: str) -> frozenset[str]:
    """The file extensions a run of ``input_type`` ("images" or "videos") lists."""
    if input_type == "videos":
        from lightly_tasks.video import VIDEO_EXTENSIONS  # PyAV: imported here to keep DAG parsing fast

        return VIDEO_EXTENSIONS
    return IMAGE_EXTENSIONS


def list_stage(ctx: RunContext, window: RunWindow | None = None) -> Manifest:
    """Take the dataset's lease for this run (see :data:`RUN_LEASE_SECONDS`), then list (:func:`_list_stage`).

    Raises :class:`~lightly_tasks.store.DatasetBusyError` when another run curates the dataset. The lease is
    released by the upload's commit, by :func:`release_stage` (the DAG's teardown) or here if listing fails.
    """
    store = ctx.store()
    try:
        store.acquire_lease(ctx.config.dataset, ctx.run_id, ttl_seconds=RUN_LEASE_SECONDS)
        try:
            return _list_stage(ctx, window)
        except BaseException:
            store.release_lease(ctx.config.dataset, ctx.run_id)
            raise
    finally:
        store.close()


def release_stage(ctx: RunContext) -> bool:
    """Release the dataset's lease if this run still holds it (after a failure); returns whether it did."""
    store = ctx.store()
    try:
        released = store.release_lease(ctx.config.dataset, ctx.run_id)
    finally:
        store.close()
    if released:
        log.info("released the lease of dataset %s held by run %s", ctx.config.dataset, ctx.run_id)
    return released


def _list_stage(ctx: RunContext, window: RunWindow | None = None) -> Manifest:
    """List the datasource, drop what the datapool has seen (same key and etag), split the rest into shards.

    ``window`` is the run's data interval: with ``datasource.window: data_interval`` or a templated datasource
    URI only the interval's objects are listed (see :mod:`lightly_tasks.windows`).
    """
    started = time.monotonic()
    cfg = ctx.config
    scope = list_window(
        ctx.datasource,
        cfg.datasource.uri,
        mode=cfg.datasource.window,
        window=window or RunWindow(),
        extensions=extensions_for(cfg.input_type),
    )
    listed = scope.objects
    if scope.folder is not None or scope.interval is not None:
        log.info(
            "run window: folder %s, data interval %s (%d objects outside it)",
            scope.folder or "(all)",
            scope.interval or "(any time)",
            scope.n_outside,
        )
    store = ctx.store()
    try:
        seen = {} if cfg.datasource.process_all else store.seen_objects(cfg.dataset, ctx.datasource_id)
    finally:
        store.close()
    is_new = np.array(
        [seen.get(k) != e for k, e in zip(listed["key"], listed["etag"], strict=True)], dtype=bool
    )
    todo = listed.loc[is_new].reset_index(drop=True)
    n_shards = _shard_count(cfg, len(todo))
    todo["shard"] = (np.arange(len(todo)) * n_shards // max(len(todo), 1)).astype("int64")
    uri = artifacts.write_table(ctx.run, "list/objects.parquet", todo)
    log.info(
        "listed %d objects (%d bytes) in %s; %d already in the datapool; %d to process in %d shard(s)",
        len(listed),
        int(listed["size"].sum()),
        ctx.datasource.uri,
        len(listed) - len(todo),
        len(todo),
        n_shards,
    )
    if listed.empty:
        log.warning(
            "datasource %s holds no %s: the run will select nothing", ctx.datasource.uri, cfg.input_type
        )
    return {
        "stage": "list",
        "objects_uri": uri,
        "n_listed": len(listed),
        "window": {"folder": scope.folder, "interval": scope.interval, "n_outside": scope.n_outside},
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
    if ctx.config.input_type == "videos":
        from lightly_tasks import video_stages

        return video_stages.corruptness_stage(ctx, shard)
    started = time.monotonic()
    objects = _shard_objects(ctx, shard)
    cache = ctx.run.child("cache", f"shard-{shard:05d}")
    artifacts.remove(
        ctx.run, f"cache/shard-{shard:05d}"
    )  # a retry must not leave parts of an earlier attempt
    counter = ByteCounter()
    table = decode_shard(
        ctx.datasource,
        objects,
        cache,
        image_size=ctx.config.embedding.image_size,
        counter=counter,
        workers=workers,
        verify=ctx.config.enable_corruptness_check,
        max_object_bytes=ctx.config.max_object_bytes,
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


def training_stage(ctx: RunContext, shards: Sequence[int]) -> Manifest:
    """Self-supervised training on the decoded cache of the run's non-corrupt samples (no datasource reads).

    Starts from ``embedding.checkpoint`` if set. Writes ``training/checkpoint-last.pt`` after every epoch and
    ``training/backbone.pt`` at the end; a retry resumes after the last finished epoch.
    """
    from lightly_tasks.training import TrainingSettings, train  # torch: imported here, as in embedding_stage

    started = time.monotonic()
    cfg = ctx.config
    parts = []
    for shard in shards:
        table = artifacts.read_table(ctx.run, f"corruptness/shard-{shard:05d}.parquet")
        parts.extend(cache_parts(ctx.run.child("cache", f"shard-{shard:05d}"), table))
    settings = TrainingSettings(
        model=cfg.embedding.model,
        method=cfg.training.method,
        epochs=cfg.training.epochs,
        batch_size=cfg.training.batch_size,
        lr=cfg.training.lr,
        image_size=cfg.training.image_size or cfg.embedding.image_size,
    )
    init = _read_uri_bytes(ctx, cfg.embedding.checkpoint) if cfg.embedding.checkpoint else None
    result = train(settings, parts, ctx.run.child("training"), init_checkpoint=init)
    return {
        "stage": "training",
        "method": settings.method,
        "model": settings.model,
        "image_size": settings.image_size,
        "epochs": len(result.loss_per_epoch),
        "loss_per_epoch": result.loss_per_epoch,
        "resumed_from_epoch": result.resumed_from_epoch,
        "epochs_trained": result.epochs_trained,
        "n_images": result.n_images,
        "images_per_second": result.images_per_second,
        "device": result.device,
        "checkpoint_uri": result.checkpoint_uri,
        "backbone_uri": result.backbone_uri,
        "bytes_read": 0,
        "seconds": round(time.monotonic() - started, 3),
    }


def _embedding_weights(ctx: RunContext) -> tuple[str | None, bytes | None]:
    """URI and bytes of the embedding model's weights: this run's trained backbone when enable_training,
    else ``embedding.checkpoint``; (None, None) for the fixed-seed random initialisation."""
    if ctx.config.enable_training:
        from lightly_tasks.training import BACKBONE

        trained = ctx.run.child("training")
        with trained.fs.open(trained.path(BACKBONE), "rb") as f:
            return trained.child_uri(BACKBONE), f.read()
    if ctx.config.embedding.checkpoint:
        return ctx.config.embedding.checkpoint, _read_uri_bytes(ctx, ctx.config.embedding.checkpoint)
    return None, None


def embedding_stage(ctx: RunContext, shard: int) -> Manifest:
    """Embed a shard's decoded cache; writes ``embedding/shard-N.parquet`` (key, embedding)."""
    from lightly_tasks.embedding import build_model, embed  # torch: imported here to keep DAG parsing fast

    started = time.monotonic()
    cfg = ctx.config
    table = artifacts.read_table(ctx.run, f"corruptness/shard-{shard:05d}.parquet")
    ok = table[table["verdict"] == "ok"].sort_values(["cache_part", "cache_row"], kind="stable")
    checkpoint_uri, checkpoint = _embedding_weights(ctx)
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
        "checkpoint": redact_uri(checkpoint_uri) if checkpoint_uri else None,
        "images_per_second": round(len(keys) / seconds, 2) if seconds else None,
        "bytes_read": 0,
        "seconds": round(seconds, 3),
    }


def pretagging_stage(ctx: RunContext, shard: int) -> Manifest:
    """Run ``pretagging_config``'s model over a shard's decoded cache (no datasource reads).

    Writes Lightly's predictions format under ``<run>/.lightly/predictions/`` (tasks.json, <task>/schema.json,
    one JSON per sample, boxes in original-image pixels) and ``pretagging/shard-N.parquet`` (key, predictions
    as JSON) for the upload's exports and report.
    """
    from lightly_tasks import predictions  # plain JSON; pretagging imports torch, so both load here
    from lightly_tasks.pretagging import load_pretagging_model, pretag

    started = time.monotonic()
    pre = ctx.config.pretagging_config
    table = artifacts.read_table(ctx.run, f"corruptness/shard-{shard:05d}.parquet")
    ok = table[table["verdict"] == "ok"].sort_values(["cache_part", "cache_row"], kind="stable")
    model = load_pretagging_model(pre, lambda uri: _read_uri_bytes(ctx, uri))
    sizes = list(zip(ok["width"].astype(int), ok["height"].astype(int), strict=True)) if len(ok) else []
    result = pretag(
        model,
        iter_cache(ctx.run.child("cache", f"shard-{shard:05d}"), ok),
        sizes,
        batch_size=pre.batch_size,
        score_threshold=pre.score_threshold,
    )
    by_file: dict[str, str] = {}
    per_key: dict[str, list[dict[str, Any]]] = {}
    for key, preds in zip(ok["key"], result.predictions, strict=True):
        name = predictions.sample_file(key)
        if name in by_file:  # Lightly names prediction files by key without extension: a.jpg and a.png clash
            log.warning("pretagging: %s shares its prediction file %s with %s; skipped", key, name, by_file[name])
            continue
        by_file[name] = key
        per_key[key] = preds
    task_uri = predictions.write_task(ctx.run, pre.task_name, model.schema)
    predictions.write_predictions(ctx.run, pre.task_name, per_key)
    rows = pd.DataFrame(
        {"key": list(per_key), "predictions": [json.dumps(p, separators=(",", ":")) for p in per_key.values()]}
    )
    uri = artifacts.write_table(ctx.run, f"pretagging/shard-{shard:05d}.parquet", rows)
    seconds = time.monotonic() - started
    return {
        "stage": "pretagging",
        "shard": shard,
        "task_name": pre.task_name,
        "task_type": model.schema.task_type,
        "model": model.source if model.source != "torchscript" else redact_uri(pre.model),
        "predictions_uri": task_uri,
        "table_uri": uri,
        "n_samples": len(per_key),
        "n_name_clashes": len(ok) - len(per_key),
        "n_predictions": int(sum(len(p) for p in per_key.values())),
        "device": result.device,
        "images_per_second": result.images_per_second,
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
    from lightly_tasks import strategy_stage  # faiss: imported here, as torch
    from lightly_tasks.selection import StoppingCondition, kcenter_greedy

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
            cfg.stopping_condition.n_samples,
            len(candidate_keys),
        )
    if (
        candidate_vectors is not None
        and len(existing_vectors)
        and existing_vectors.shape[1] != candidate_vectors.shape[1]
    ):
        raise ValueError(
            f"dataset {cfg.dataset!r} holds {existing_vectors.shape[1]}-d embeddings but this run's model gives "
            f"{candidate_vectors.shape[1]}-d: use the dataset's embedding model or a new dataset"
        )
    distance = np.full(len(table), np.nan, dtype=np.float32)
    order = np.full(len(table), -1, dtype=np.int64)
    stopped_by = "exhausted"
    strategies, loaded_predictions = None, None
    if candidate_keys:
        if cfg.selected_sequence_length > 1:
            from lightly_tasks.sequences import select_sequences

            picked = select_sequences(
                table,
                candidate_keys,
                candidate_vectors,
                length=cfg.selected_sequence_length,
                existing=existing_vectors if len(existing_vectors) else None,
                stop=stop,
            )
        elif cfg.selection_config.strategies:
            picked, loaded_predictions = strategy_stage.run_strategies(
                ctx, table, candidate_keys, candidate_vectors, existing_vectors, stop
            )
            strategies = picked.summary
        else:
            picked = kcenter_greedy(
                candidate_vectors, existing=existing_vectors if len(existing_vectors) else None, stop=stop
            )
        stopped_by = picked.stopped_by
        position = {k: i for i, k in enumerate(table["key"])}
        for rank, (index, dist) in enumerate(zip(picked.indices, picked.distances, strict=True)):
            i = position[candidate_keys[int(index)]]
            status[i], distance[i], order[i] = "selected", dist, rank
        for index, why in strategy_stage.exclusions(cfg, picked):
            reason[position[candidate_keys[index]]] = why
    status = np.where(status == "candidate", "not_selected", status)
    result = table.assign(status=status, reason=reason, distance=distance, order=order)
    uri = artifacts.write_table(ctx.run, "selection/objects.parquet", result)
    summary_uri = strategy_stage.write_summary(
        ctx, candidate_keys, result.loc[result["status"] == "selected"].sort_values("order")["key"].tolist(),
        strategies, loaded_predictions,
    )
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
        "summary_uri": summary_uri,
        "bytes_read": 0,
        "seconds": round(time.monotonic() - started, 3),
    }


METADATA_EXCLUDED = {
    "key",
    "etag",
    "size",
    "last_modified",
    "shard",
    "verdict",
    "reason",
    "content_hash",
    "cache_part",
    "cache_row",
    "status",
    "distance",
    "order",
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
    training: Manifest | None = None,
    pretagging: Sequence[Manifest] | None = None,
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

    videos = None
    if cfg.input_type == "videos":
        from lightly_tasks import video_stages

        videos = video_stages.video_verdicts(ctx, shards)
    counter = ByteCounter()
    outputs: dict[str, str] = {}
    if cfg.dump.output:
        output = ctx.resolve(cfg.dump.output)
        if videos is not None:
            video_stages.dump(ctx, output, selected, videos, counter)
        else:
            sizes = selected["size"].tolist()
            dump_selected(ctx.datasource, output, selected["key"].tolist(), counter, sizes)
        outputs["dump"] = output.uri
    pretagged = [m for m in pretagging or [] if m]
    pretag_report = _pretagging_outputs(ctx, selected["key"].tolist(), pretagged, outputs) if pretagged else None

    run = ctx.run
    by_status = {s: objects.loc[objects["status"] == s, "key"].tolist() for s in ("corrupt", "duplicate")}
    outputs["selected_filenames"] = write_filenames(run, "selected", selected["key"].tolist())
    outputs["corrupt_filenames"] = write_filenames(run, "corrupt", by_status["corrupt"])
    outputs["duplicate_filenames"] = write_filenames(run, "duplicate", by_status["duplicate"])
    outputs["embeddings_csv"] = artifacts.write_bytes(
        run, "data/embeddings.csv", embeddings_csv(selected["key"].tolist(), selected_vectors)
    )
    corrupt = objects[objects["status"] == "corrupt"]
    outputs["corrupt_reasons"] = artifacts.write_table(
        run, "corruptness/corrupt.parquet", corrupt[["key", "reason"]]
    )

    # Objects that vanished or could not be read are left out of the datapool so the next run retries them.
    unreadable = objects["reason"].fillna("").str.startswith(("missing:", "read error:"))
    processed = objects.loc[~unreadable, ["key", "etag"]]
    if videos is not None:  # the datapool holds videos, the samples are frames
        processed = video_stages.processed_videos(videos)
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
        **({"training": _stage_figures([training])} if training else {}),
        "embedding": {
            **_stage_figures(embedded),
            "checkpoint": next((m.get("checkpoint") for m in embedded), None),
        },
        "selection": _stage_figures([selection]),
        "metadata": _stage_figures([metadata]),
        **({"pretagging": _stage_figures(pretagged)} if pretagged else {}),
    }
    if videos is not None:
        counted = video_stages.frame_counting_figures(ctx)
        stages = {"list": stages.pop("list"), "frame_counting": counted, **stages}
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
            ),
            lease_holder=ctx.run_id,
        )
        n_after = len(store.samples(cfg.dataset))
    finally:
        store.close()
    if not committed:
        log.warning(
            "run %s of dataset %s was already committed; the store is unchanged", ctx.run_id, cfg.dataset
        )
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
        training=None
        if training is None
        else {
            "method": training["method"],
            "model": training["model"],
            "epochs": training["epochs"],
            "lossPerEpoch": training["loss_per_epoch"],
            "imagesPerSecond": training["images_per_second"],
            "backbone": training["backbone_uri"],
        },
        **_selection_summary(ctx, selection),
    )
    if videos is not None:
        report.update(video_stages.report_sections(ctx, selected, videos))
    if pretag_report is not None:
        report["pretagging"] = pretag_report
    report_uri = artifacts.write_json(run, "report.json", report)
    if not cfg.keep_cache:
        artifacts.remove(run, "cache")
    log.info(
        "run %s: %d input, %d corrupt, %d duplicates, %d selected; read %d of %d datasource bytes; report %s",
        ctx.run_id,
        counts["nInput"],
        counts["nCorrupt"],
        counts["nDuplicate"],
        counts["nSelected"],
        report["traffic"]["bytesRead"],
        report["traffic"]["datasourceBytes"],
        report_uri,
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


def _pretagging_outputs(
    ctx: RunContext, selected_keys: Sequence[str], pretagged: Sequence[Manifest], outputs: dict[str, str]
) -> dict[str, Any]:
    """Copy the selected samples' predictions next to the dump (``<dump.output>/.lightly/predictions/``) and
    return the report's pretagging section: task, model and the class distribution before/after selection."""
    from lightly_tasks import predictions

    task = pretagged[0]["task_name"]
    schema = predictions.load_schema(ctx.run, task)
    tables = [artifacts.read_table(ctx.run, f"pretagging/shard-{m['shard']:05d}.parquet") for m in pretagged]
    table = pd.concat(tables, ignore_index=True)
    by_key = {k: json.loads(p) for k, p in zip(table["key"], table["predictions"], strict=True)}
    chosen = {k: by_key[k] for k in selected_keys if k in by_key}
    outputs["predictions"] = ctx.run.child_uri(predictions.PREDICTIONS_DIR)
    if ctx.config.dump.output:
        output = ctx.resolve(ctx.config.dump.output)
        predictions.write_task(output, task, schema)
        predictions.write_predictions(output, task, chosen)
        outputs["dump_predictions"] = output.child_uri(predictions.PREDICTIONS_DIR)
    return {
        "task": task,
        "taskType": schema.task_type,
        "model": pretagged[0]["model"],
        "device": pretagged[0]["device"],
        "nSamples": len(by_key),
        "nPredictions": int(sum(m["n_predictions"] for m in pretagged)),
        "nNameClashes": int(sum(m["n_name_clashes"] for m in pretagged)),
        "classDistribution": {
            "input": predictions.class_distribution(schema, by_key.values()),
            "selected": predictions.class_distribution(schema, chosen.values()),
        },
    }


def _selection_summary(ctx: RunContext, selection: Manifest) -> dict[str, Any]:
    """The report's strategy summary and class distributions, from ``selection/summary.json`` if written."""
    if not selection.get("summary_uri"):
        return {}
    summary = artifacts.read_json(ctx.run, "selection/summary.json")
    return {"strategies": summary["strategies"], "class_distribution": summary["classDistribution"]}


def _json_metadata(row: pd.Series) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in row.items():
        if value is None or (isinstance(value, float) and not np.isfinite(value)):
            continue
        out[str(name)] = value.item() if isinstance(value, np.generic) else value
    return out
