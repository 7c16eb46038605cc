"""The selection stage's side of the Lightly Worker's strategies: gather their inputs from the run, summarise.

Inputs come from what the run already has: the decoding pass's metadata columns, the embeddings, the dataset
store (existing samples, tags for SIMILARITY query sets) and predictions in the Lightly format, read first from
the run's own pretagging output (``<run>/.lightly/predictions/``) and else from the datasource's
``.lightly/predictions/`` (where Lightly Worker users keep their own predictions). The summary (per strategy,
and the class distribution of every prediction task before and after selection) goes to
``selection/summary.json`` for the report (pretagging's own task is also summarised by the pretagging section).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from lightly_tasks import artifacts
from lightly_tasks.config import RunConfig, SelectionInputConfig
from lightly_tasks.pipeline import METADATA_EXCLUDED, RunContext
from lightly_tasks.predictions import PredictionFormatError, class_distribution, list_tasks, load_predictions
from lightly_tasks.selection import StoppingCondition
from lightly_tasks.storage import Location
from lightly_tasks.strategies import SelectionInputs, StrategySelection, select_with_strategies

log = logging.getLogger(__name__)

SUMMARY = "selection/summary.json"


def prediction_tasks(ctx: RunContext) -> list[str]:
    """The prediction tasks the strategies read (SCORES and PREDICTIONS inputs), in order."""
    return list(dict.fromkeys(e.input.task for e in ctx.config.selection_config.strategies if e.input.task))


def load_task_predictions(
    locations: Sequence[Location], tasks: Sequence[str], keys: Sequence[str]
) -> dict[str, tuple[Any, dict[str, Any]]]:
    """``{task: (schema, {key: predictions})}`` for the ``keys``, each task from the first location listing it.

    A task no location lists is left out (a strategy that needs it then fails naming it). A malformed file
    raises :class:`~lightly_tasks.predictions.PredictionFormatError` naming the file.
    """
    found: dict[str, tuple[Any, dict[str, Any]]] = {}
    for task in tasks:
        for location in locations:
            try:
                listed = list_tasks(location)
            except PredictionFormatError:
                continue  # no (readable) tasks.json here
            if task in listed:
                found[task] = load_predictions(location, task, keys)
                log.info("predictions of task %s: %d of %d samples, from %s", task, len(found[task][1]), len(keys),
                         location.uri)
                break
    return found


def _query_resolver(ctx: RunContext, keys: Sequence[str], vectors: np.ndarray) -> Any:
    """A SIMILARITY input -> (Q, D) embeddings of its query set (a tag of a dataset, or sample/candidate keys)."""

    def resolve(inp: SelectionInputConfig) -> np.ndarray:
        dataset = inp.dataset_id or ctx.config.dataset
        store = ctx.store()
        try:
            samples = store.samples(dataset)
            sample_keys, sample_vectors = store.embeddings(dataset)
            tags = [t.name for t in store.tags(dataset)]
        finally:
            store.close()
        rows: list[np.ndarray] = []
        if inp.tag_name:
            if inp.tag_name not in tags:
                raise ValueError(
                    f"SIMILARITY: dataset {dataset!r} has no tag {inp.tag_name!r} (tags: {', '.join(tags) or 'none'})"
                )
            tagged = set(samples.loc[samples["tags"].map(lambda t: inp.tag_name in t), "key"])
            rows.extend(v for k, v in zip(sample_keys, sample_vectors, strict=True) if k in tagged)
        if inp.file_names:
            wanted = set(inp.file_names)
            rows.extend(v for k, v in zip(sample_keys, sample_vectors, strict=True) if k in wanted)
            rows.extend(v for k, v in zip(keys, vectors, strict=True) if k in wanted)
        return np.stack(rows) if rows else np.zeros((0, vectors.shape[1] if vectors.ndim == 2 else 0), np.float32)

    return resolve


def run_strategies(
    ctx: RunContext,
    table: pd.DataFrame,
    keys: Sequence[str],
    vectors: np.ndarray,
    existing: np.ndarray,
    stop: StoppingCondition,
) -> tuple[StrategySelection, dict[str, tuple[Any, dict[str, Any]]]]:
    """The combined selection of ``selection_config.strategies`` over the candidates ``keys``/``vectors``.

    ``table`` holds the decoding pass's rows (metadata columns) for at least the candidate keys. Returns the
    selection and the predictions it loaded (for :func:`write_summary`).
    """
    metadata = table.set_index("key").reindex(list(keys))
    metadata = metadata[[c for c in metadata.columns if c not in METADATA_EXCLUDED]].reset_index(drop=True)
    predictions = load_task_predictions([ctx.run, ctx.datasource], prediction_tasks(ctx), keys)
    data = SelectionInputs(
        keys=keys,
        embeddings=vectors,
        existing=existing if len(existing) else None,
        metadata=metadata,
        predictions=predictions,
        query=_query_resolver(ctx, keys, vectors),
    )
    return select_with_strategies(ctx.config.selection_config.strategies, data, stop), predictions


def exclusions(config: RunConfig, picked: Any) -> list[tuple[int, str]]:
    """(candidate index, reason) of each candidate a THRESHOLD strategy excluded (none for other selections)."""
    excluded_by = getattr(picked, "excluded_by", None)
    if excluded_by is None:
        return []
    out = []
    for index in np.flatnonzero(excluded_by >= 0):
        entry = config.selection_config.strategies[int(excluded_by[index])]
        what = entry.input.key or f"{entry.input.task}:{entry.input.score}"
        out.append((int(index), f"THRESHOLD: {what} not {entry.strategy.operation} {entry.strategy.threshold}"))
    return out


def write_summary(
    ctx: RunContext,
    candidate_keys: Sequence[str],
    selected_keys: Sequence[str],
    strategies: list[dict[str, Any]] | None,
    predictions: dict[str, tuple[Any, dict[str, Any]]] | None = None,
) -> str | None:
    """Write ``selection/summary.json``: the strategies' summary and, per prediction task they read, the class
    distribution of the candidates (``before``) and of the selected samples (``after``). None without strategies.
    """
    if not strategies:
        return None
    distributions = {}
    for task, (schema, preds) in (predictions or {}).items():
        distributions[task] = {
            "before": _distribution(schema, preds, candidate_keys),
            "after": _distribution(schema, preds, selected_keys),
        }
    return artifacts.write_json(
        ctx.run, SUMMARY, {"strategies": _jsonable(strategies), "classDistribution": distributions}
    )


def _distribution(schema: Any, preds: dict[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    """Counts (objects or samples per category, every category of the schema) and shares over ``keys``."""
    counts = class_distribution(schema, (preds.get(k, []) for k in keys))
    total = sum(counts.values())
    return {
        "nSamples": len(keys),
        "nWithPredictions": sum(k in preds for k in keys),
        "counts": counts,
        "shares": {name: round(n / total, 4) if total else 0.0 for name, n in counts.items()},
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
