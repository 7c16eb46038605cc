"""Active-learning scores and class labels of samples, from predictions in the Lightly format.

A task's predictions are its ``schema.json`` (``task_type``, ``categories: [{id, name}]``) and, per sample file
name, the list of its predictions (``category_id``, ``score``, optional ``probabilities``, and ``bbox`` for
detections), as the Lightly Worker reads them from ``.lightly/predictions/<task>/``.

Scores follow Lightly's scorers (open-source ``lightly.active_learning.scorers``), all in [0, 1], high = worth
labelling:

- ``uncertainty_least_confidence``: ``(1 - max p) * C / (C - 1)``; ``uncertainty_margin``: ``1 - (p1 - p2)``;
  ``uncertainty_entropy``: entropy of p divided by ``log C``. For a detection task each object is scored and
  the sample gets the maximum (0 without objects). Without ``probabilities`` a prediction's ``score`` s is
  read as the two-class distribution (s, 1 - s).
- ``object_frequency``: many objects of many classes: per sample, each class counts 1 for its first object and
  0.25 for every further one; the sums are scaled linearly to [0.9, 1] over the candidates, as Lightly's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

FREQUENCY_PENALTY = 0.25
FREQUENCY_MIN_SCORE = 0.9

Predictions = Sequence[Mapping[str, Any]]


def sample_predictions(value: Any) -> list[Mapping[str, Any]]:
    """The prediction list of one sample, given either the list or the whole ``{"predictions": [...]}`` file."""
    if value is None:
        return []
    if isinstance(value, Mapping):
        value = value.get("predictions", [])
    return list(value)


def category_names(schema: Any) -> dict[int, str]:
    """``category_id -> name`` from a task's schema: a :class:`~lightly_tasks.predictions.PredictionSchema` or
    the ``schema.json`` document."""
    if hasattr(schema, "names"):
        return dict(schema.names)
    return {int(c["id"]): str(c["name"]) for c in (schema or {}).get("categories", [])}


def _probabilities(prediction: Mapping[str, Any]) -> np.ndarray:
    probs = prediction.get("probabilities")
    if probs is not None and len(probs) >= 2:
        p = np.clip(np.asarray(probs, np.float64), 0.0, None)
        total = p.sum()
        return p / total if total > 0 else np.full(len(p), 1.0 / len(p))
    s = float(np.clip(prediction.get("score", 1.0), 0.0, 1.0))
    return np.array([s, 1.0 - s])


def _uncertainty(p: np.ndarray, score: str) -> float:
    c = len(p)
    top = np.sort(p)[::-1]
    if score == "uncertainty_least_confidence":
        return float((1.0 - top[0]) * c / (c - 1))
    if score == "uncertainty_margin":
        return float(1.0 - (top[0] - top[1]))
    nz = p[p > 0]
    return float(-(nz * np.log(nz)).sum() / np.log(c))


def compute_scores(
    keys: Sequence[str],
    predictions: Mapping[str, Any],
    score: str,
    *,
    schema: Any = None,
    categories: Sequence[str] | None = None,
) -> np.ndarray:
    """(N,) float64 ``score`` of each of ``keys``; NaN for a key without predictions.

    ``categories`` (names, resolved with ``schema``) keeps only the objects of those categories.
    """
    wanted = _category_filter(schema, categories)
    out = np.full(len(keys), np.nan)
    counts = np.full(len(keys), np.nan)
    for i, key in enumerate(keys):
        if key not in predictions:
            continue
        preds = [p for p in sample_predictions(predictions[key]) if wanted is None or p.get("category_id") in wanted]
        if score == "object_frequency":
            seen: dict[Any, float] = {}
            for p in preds:
                c = p.get("category_id")
                seen[c] = seen[c] + FREQUENCY_PENALTY if c in seen else 1.0
            counts[i] = sum(seen.values())
        else:
            out[i] = max((_uncertainty(_probabilities(p), score) for p in preds), default=0.0)
    if score == "object_frequency":
        have = ~np.isnan(counts)
        if have.any():
            lo, hi = counts[have].min(), counts[have].max()
            out[have] = np.interp(counts[have], (lo, hi), (FREQUENCY_MIN_SCORE, 1.0)) if hi > lo else 1.0
    return out


def _category_filter(schema: Any, categories: Sequence[str] | None) -> set[int] | None:
    if not categories:
        return None
    by_name = {name: cid for cid, name in category_names(schema).items()}
    unknown = [c for c in categories if c not in by_name]
    if unknown:
        raise ValueError(f"categories {unknown} are not in the task's schema (it has: {sorted(by_name)})")
    return {by_name[c] for c in categories}


def class_labels(
    keys: Sequence[str],
    predictions: Mapping[str, Any],
    *,
    schema: Any = None,
    categories: Sequence[str] | None = None,
) -> list[list[str]]:
    """Per key, the category names of its predictions (one per object; one for a classification)."""
    names = category_names(schema)
    wanted = _category_filter(schema, categories)
    labels = []
    for key in keys:
        preds = sample_predictions(predictions.get(key))
        labels.append(
            [
                names.get(int(p["category_id"]), str(p["category_id"]))
                for p in preds
                if "category_id" in p and (wanted is None or p["category_id"] in wanted)
            ]
        )
    return labels
