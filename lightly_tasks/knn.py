"""k-nearest-neighbour accuracy of embeddings: the standard yardstick of self-supervised representations."""

from __future__ import annotations

import numpy as np


def knn_accuracy(vectors: np.ndarray, labels: np.ndarray, *, k: int = 5) -> float:
    """Leave-one-out kNN classification accuracy of (N, D) ``vectors`` with (N,) integer ``labels``.

    Neighbours by cosine similarity (vectors are L2-normalised here); each sample's own vector is excluded;
    the prediction is the majority label of the ``k`` nearest, ties broken by the nearest one's label.
    """
    if len(vectors) <= k:
        raise ValueError(f"need more than k={k} samples, got {len(vectors)}")
    x = vectors.astype(np.float32, copy=False)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    similarity = x @ x.T
    np.fill_diagonal(similarity, -np.inf)
    nearest = np.argsort(-similarity, axis=1, kind="stable")[:, :k]  # (N, k), nearest first
    neighbour_labels = labels[nearest]
    n_classes = int(labels.max()) + 1
    votes = np.zeros((len(x), n_classes), dtype=np.float32)
    np.add.at(votes, (np.arange(len(x))[:, None], neighbour_labels), 1.0)
    votes[np.arange(len(x)), neighbour_labels[:, 0]] += 0.5  # tie-break towards the nearest neighbour
    return float((votes.argmax(axis=1) == labels).mean())
