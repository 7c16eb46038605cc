"""Sequence selection over video frames (``selected_sequence_length``) and the report's sequence information.

As in the Lightly Worker, each video's sampled frames are split into consecutive runs ("sequences") of
``length`` frames; a sequence's embedding is the mean of its frames' embeddings (L2-normalised again), and
k-center greedy picks whole sequences. A sequence is a candidate only when all of its frames are candidates
(none corrupt, duplicate or already in the dataset), and a video's trailing frames that do not fill a sequence
are never selected. Stopping conditions count frames: ``n_samples`` frames are ``n_samples / length``
sequences, a proportion is rounded up to whole sequences.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from lightly_tasks.selection import Selection, StoppingCondition, kcenter_greedy, proportion_count


def sequence_ids(frames: pd.DataFrame, length: int) -> np.ndarray:
    """Sequence number of each row of ``frames`` (video_key, frame_index): (N,) int64, -1 for video rows.

    Sequences are numbered across videos in (video_key, frame_index) order; rows of one sequence are
    ``length`` consecutive sampled frames of one video (fewer for a video's last, incomplete one).
    """
    ids = np.full(len(frames), -1, dtype=np.int64)
    if not len(frames):
        return ids
    is_frame = frames["frame_index"].to_numpy() >= 0
    order = frames.loc[is_frame].sort_values(["video_key", "frame_index"], kind="stable")
    position = order.groupby("video_key", sort=False).cumcount().to_numpy() // length
    video_change = order["video_key"].ne(order["video_key"].shift()).to_numpy()
    new_sequence = video_change | np.r_[True, np.diff(position) != 0]
    ids[frames.index.get_indexer(order.index)] = np.cumsum(new_sequence) - 1
    return ids


def select_sequences(
    frames: pd.DataFrame,
    candidate_keys: list[str],
    candidate_vectors: np.ndarray,
    *,
    existing: np.ndarray | None,
    stop: StoppingCondition,
    length: int,
) -> Selection:
    """Pick whole sequences of ``length`` frames by k-center greedy on their mean embeddings.

    ``frames`` is the run's frame table (key, video_key, frame_index); ``candidate_vectors`` (N, D) are the
    embeddings of ``candidate_keys``. Returns indices into the candidates, sequence by sequence in pick order,
    each frame carrying its sequence's distance.
    """
    ids = sequence_ids(frames, length)
    row_of = {k: i for i, k in enumerate(candidate_keys)}
    members: dict[int, list[int]] = {}
    sizes = pd.Series(ids[ids >= 0]).value_counts().to_dict()
    blocked: set[int] = set()
    for key, sequence in zip(frames["key"], ids, strict=True):
        if sequence < 0:
            continue
        if key in row_of:
            members.setdefault(int(sequence), []).append(row_of[key])
        else:
            blocked.add(int(sequence))
    usable = sorted(s for s, rows in members.items() if s not in blocked and len(rows) == length == sizes[s])
    if not usable:
        return Selection(np.zeros(0, np.int64), np.zeros(0, np.float32), "exhausted")
    groups = [sorted(members[s], key=lambda r: candidate_keys[r]) for s in usable]
    means = np.stack([candidate_vectors[g].mean(axis=0) for g in groups]).astype(np.float32)
    means /= np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
    limits: list[tuple[int, str]] = []
    if stop.n_samples is not None:
        limits.append((stop.n_samples // length, "n_samples"))
    if stop.proportion_samples is not None:
        frames_wanted = proportion_count(stop.proportion_samples, len(candidate_keys))
        limits.append((math.ceil(frames_wanted / length), "proportion_samples"))
    limit, limit_name = min(limits) if limits else (None, None)
    picked = kcenter_greedy(
        means, existing=existing, stop=StoppingCondition(n_samples=limit, min_distance=stop.min_distance)
    )
    stopped_by = limit_name if picked.stopped_by == "n_samples" else picked.stopped_by
    indices = [row for s in picked.indices for row in groups[int(s)]]
    distances = np.repeat(picked.distances, length)
    return Selection(np.asarray(indices, np.int64), distances.astype(np.float32), stopped_by)


def sequence_information(selected: pd.DataFrame, length: int) -> list[dict[str, Any]]:
    """The report's ``sequence_information``: one entry per selected sequence, in pick order.

    ``selected`` holds the selected frames (key, video_key, frame_index, frame_pts, frame_time, order); the
    frames of one sequence have consecutive pick ``order``, as :func:`select_sequences` returns them. Each
    entry has ``video_name``, ``frame_names``, ``frame_indices``, ``frame_timestamps_pts`` and
    ``frame_timestamps_sec`` (lists in frame order). With ``length`` 1 every frame is its own sequence.
    """
    if not len(selected):
        return []
    frames = selected.assign(sequence=selected["order"].to_numpy() // length)
    out = []
    for _, sequence in frames.groupby("sequence", sort=True):
        sequence = sequence.sort_values("frame_index")
        out.append(
            {
                "video_name": str(sequence["video_key"].iloc[0]),
                "frame_names": sequence["key"].tolist(),
                "frame_indices": [int(i) for i in sequence["frame_index"]],
                "frame_timestamps_pts": [None if pd.isna(p) else int(p) for p in sequence["frame_pts"]],
                "frame_timestamps_sec": [None if pd.isna(t) else float(t) for t in sequence["frame_time"]],
            }
        )
    return out
