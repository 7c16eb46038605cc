"""k-nearest-neighbour accuracy of embeddings: the standard yardstick of self-supervised representations."""

from __future__ import annotations

import numpy as np


def knn_accuracy(
    vectors: np.ndarray,
    labels: np.ndarray,
    *,
    k: int = 5,
    queries: np.ndarray | None = None,
    query_labels: np.ndarray | None = None,
) -> float:
    """kNN classification accuracy of (N, D) ``vectors`` with (N,) integer ``labels``.

    Leave-one-out over ``vectors`` (each sample's own vector excluded), or, with ``queries`` and
    ``query_labels``, the accuracy on those held-out queries with ``vectors`` as the labeled reference.
    Neighbours by cosine similarity (vectors are L2-normalised here); the prediction is the majority label of
    the ``k`` nearest, ties broken by the nearest one's label.
    """
    if len(vectors) <= k:
        raise ValueError(f"need more than k={k} samples, got {len(vectors)}")
    if (queries is None) != (query_labels is None):
        raise ValueError("give both queries and query_labels, or neither")
    x = _normalised(vectors)
    q = x if queries is None else _normalised(queries)
    truth = labels if query_labels is None else query_labels
    similarity = q @ x.T
    if queries is None:
        np.fill_diagonal(similarity, -np.inf)
    nearest = np.argsort(-similarity, axis=1, kind="stable")[:, :k]  # (Q, k), nearest first
    neighbour_labels = labels[nearest]
    n_classes = int(max(labels.max(), truth.max())) + 1
    votes = np.zeros((len(q), n_classes), dtype=np.float32)
    np.add.at(votes, (np.arange(len(q))[:, None], neighbour_labels), 1.0)
    votes[np.arange(len(q)), neighbour_labels[:, 0]] += 0.5  # tie-break towards the nearest neighbour
    return float((votes.argmax(axis=1) == truth).mean())


def _normalised(vectors: np.ndarray) -> np.ndarray:
    x = vectors.astype(np.float32, copy=False)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
