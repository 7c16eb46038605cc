"""Farthest-first (k-center greedy) selection of diverse samples from their embeddings.

Gonzalez's traversal: repeatedly pick the candidate farthest (Euclidean) from its nearest centre. The
samples already in the dataset are the initial centres, so a run picks what the dataset lacks. Without them
the first pick is candidate 0 (as in Lightly's selection engine); ties go to the lowest candidate index.

The picks are those of a brute-force traversal (up to float32 ties), but a step computes exact distances
only to the candidates the new centre ``c`` may win, found with two lower bounds on ``d(x, c)``:

- clusters: every candidate belongs to the cluster of its nearest centre ``a``, and each cluster keeps its
  radius (largest member distance). By the triangle inequality ``c`` can only win members of clusters with
  ``d(c, a) < 2 * radius``, and among them only the ``x`` with ``d(c, a) < 2 * d(x, a)``.
- sketches (D >= 24): each candidate keeps its top principal coordinates and the norm of its residual; the
  distance between two sketches is a lower bound on the true distance and costs 8 floats, not D.

The farthest candidate is the member with the largest distance in the cluster of largest radius.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import faiss
import numpy as np

# Relative margin on every pruning bound, so float rounding never skips a candidate brute force updates.
_SLACK = 1e-4
# Find contenders by one pass over all candidates, not member lists, when the hit clusters hold more.
_DENSE_FRACTION = 0.3
# Compute exact distances by one pass over the whole array, not gathered rows, when more contend.
_STREAM_FRACTION = 0.2
# Sketch rows scanned at once when every candidate's bound is needed.
_SCAN_ROWS = 1 << 16
# Bytes of candidate rows gathered or transformed at once (also capped by chunk_size rows).
_BLOCK_BYTES = 2 << 20
# Floats per candidate sketch (principal coordinates + residual norm), the dimension from which to keep
# them, and the rows sampled (evenly strided) to find the principal axes.
_SKETCH_DIMS = 8
_SKETCH_MIN_D = 24
_SKETCH_SAMPLE = 8192


def proportion_count(proportion: float, n: int) -> int:
    """``ceil(proportion * n)``, rounded to 6 decimals first, and at least 1 of n > 0 candidates."""
    return max(1 if n > 0 else 0, math.ceil(round(proportion * n, 6)))


@dataclass(frozen=True)
class StoppingCondition:
    """When to stop picking; the first condition met wins, and at least one must be set.

    ``proportion_samples`` selects ``ceil(p * N)`` of N candidates (at least one when N > 0); the product is
    rounded to 6 decimals first, so binary float error does not add a sample (0.3 of 10 is 3, not 4).
    ``min_distance`` stops before a pick that would be closer than it to every centre.
    """

    n_samples: int | None = None
    proportion_samples: float | None = None
    min_distance: float | None = None

    def count_limits(self, n: int) -> list[tuple[int, str]]:
        """The count conditions for ``n`` candidates as (limit, name), after validating the whole condition."""
        if self.n_samples is None and self.proportion_samples is None and self.min_distance is None:
            raise ValueError("StoppingCondition needs n_samples, proportion_samples or min_distance")
        limits = []
        if self.n_samples is not None:
            if self.n_samples < 0:
                raise ValueError(f"n_samples must be >= 0, got {self.n_samples}")
            limits.append((int(self.n_samples), "n_samples"))
        if self.proportion_samples is not None:
            if not 0 < self.proportion_samples <= 1:
                raise ValueError(f"proportion_samples must be in (0, 1], got {self.proportion_samples}")
            limits.append((proportion_count(self.proportion_samples, n), "proportion_samples"))
        if self.min_distance is not None and not self.min_distance >= 0:
            raise ValueError(f"min_distance must be >= 0, got {self.min_distance}")
        return limits


@dataclass(frozen=True)
class Selection:
    """Picks in order: ``indices`` (k,) int64 into the candidates, ``distances`` (k,) float32 from each pick
    to its nearest centre when it was chosen (inf for a first pick without initial centres)."""

    indices: np.ndarray
    distances: np.ndarray
    stopped_by: str


def kcenter_greedy(
    candidates: np.ndarray,
    *,
    existing: np.ndarray | None = None,
    stop: StoppingCondition,
    chunk_size: int = 65536,
) -> Selection:
    """Farthest-first traversal of ``candidates`` (N, D) around the initial centres ``existing`` (M, D).

    ``stopped_by`` is the condition that ended the run, or "exhausted" when every candidate was picked
    before one was met (an n_samples above N selects all N; no candidates select none). ``chunk_size``
    caps the rows handled at once. Float32 C-contiguous inputs are not copied; extra memory is about 60
    bytes per candidate plus blocks of at most 2 MiB.
    """
    limits = stop.count_limits(len(candidates))
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    x = as_matrix(candidates, "candidates")
    clusters = Clusters(x, chunk_size)
    if existing is not None and len(existing):
        centres = as_matrix(existing, "existing")
        if centres.shape[1] != x.shape[1]:
            raise ValueError(f"existing has dimension {centres.shape[1]}, candidates {x.shape[1]}")
        if len(x):
            clusters.seed(centres)
    picks: list[int] = []
    dists: list[float] = []
    while True:
        reached = [name for limit, name in limits if len(picks) >= limit]
        if reached:
            stopped_by = reached[0]
            break
        if len(picks) == len(x):
            stopped_by = "exhausted"
            break
        home, pick, dist = clusters.farthest()
        if stop.min_distance is not None and dist < stop.min_distance:
            stopped_by = "min_distance"
            break
        picks.append(pick)
        dists.append(dist)
        clusters.add_centre(pick, home)
    return Selection(np.asarray(picks, np.int64), np.asarray(dists, np.float32), stopped_by)


def as_matrix(a: np.ndarray, name: str) -> np.ndarray:
    """``a`` as a C-contiguous float32 (rows, D) array, copied only when it is not one already."""
    m = np.ascontiguousarray(a, dtype=np.float32)
    if m.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows, D), got shape {m.shape}")
    return m


def _sq_dists(c: np.ndarray, rows: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Squared L2 distances from ``c`` (D,) to each of ``rows`` (n, D) into ``out`` (n,), by differences
    (no ``|x|^2 - 2xc + |c|^2`` expansion, so a duplicate is at exactly 0)."""
    faiss.fvec_L2sqr_ny(
        faiss.swig_ptr(out), faiss.swig_ptr(c), faiss.swig_ptr(rows), rows.shape[1], len(rows)
    )
    return out


def _sq_dists_at(c: np.ndarray, x: np.ndarray, sub: np.ndarray, block: np.ndarray) -> np.ndarray:
    """Squared distances (len(sub),) from ``c`` to the rows ``x[sub]``, gathered ``len(block)`` at a time."""
    out = np.empty(len(sub), np.float32)
    for s in range(0, len(sub), len(block)):
        e = min(s + len(block), len(sub))
        rows = block[: e - s]
        np.take(x, sub[s:e], axis=0, out=rows, mode="clip")
        _sq_dists(c, rows, out[s:e])
    return out


class _Sketches:
    """Per-candidate sketch ``rows`` (N, 8): 7 principal coordinates of ``x - mean`` and the residual norm.

    For any x, c: ``|x - c|^2 >= |P(x - c)|^2 + (|R(x - m)| - |R(c - m)|)^2`` (P the projection on the
    principal axes, R on the rest), which is the squared distance between their sketches. ``err`` is an
    absolute margin for the float32 rounding of the sketches.
    """

    def __init__(self, x: np.ndarray, block_rows: int) -> None:
        sample = x[:: max(1, len(x) // _SKETCH_SAMPLE)]
        mean = sample.mean(axis=0, dtype=np.float64).astype(np.float32)
        centred = sample - mean
        # Any orthonormal axes give a valid bound; the principal ones of a sample give a tight one, found
        # by a few subspace iterations (a full eigendecomposition is slow for large D).
        cov = (centred.T @ centred).astype(np.float64)
        basis = np.random.default_rng(0).standard_normal((cov.shape[0], 2 * _SKETCH_DIMS))
        for _ in range(4):
            basis = np.linalg.qr(cov @ basis)[0]
        top = np.linalg.eigh(basis.T @ cov @ basis)[1][:, ::-1][:, : _SKETCH_DIMS - 1]
        axes = np.ascontiguousarray((basis @ top).T, dtype=np.float32)
        # Stored shrunk by sqrt(1 - slack), so sketch distances come out already lowered by the margin.
        shrink = math.sqrt(1 - _SLACK)
        self.rows = np.empty((len(x), _SKETCH_DIMS), np.float32)
        self.itype = np.int32 if len(x) < 2**31 else np.int64
        scale = 0.0
        for s in range(0, len(x), block_rows):
            y = x[s : s + block_rows] - mean
            scale = max(scale, float(np.einsum("ij,ij->i", y, y).max()))
            coords = np.einsum("ij,kj->ik", y, axes)
            y -= np.einsum("ik,kj->ij", coords, axes)
            self.rows[s : s + len(y), :-1] = coords * shrink
            self.rows[s : s + len(y), -1] = np.sqrt(np.einsum("ij,ij->i", y, y)) * shrink
        self.err = 1e-5 * scale

    def contend(self, pick: int, sub: np.ndarray | None, mind2: np.ndarray) -> np.ndarray:
        """Those of ``sub`` (all candidates if None) whose bound to ``pick`` is below their ``mind2``."""
        c = self.rows[pick]
        if sub is None:
            lb2 = np.empty(min(len(self.rows), _SCAN_ROWS), np.float32)
            found = []
            for s in range(0, len(self.rows), _SCAN_ROWS):
                part = _sq_dists(c, self.rows[s : s + _SCAN_ROWS], lb2[: min(_SCAN_ROWS, len(self.rows) - s)])
                part -= self.err
                found.append((np.flatnonzero(part < mind2[s : s + len(part)]) + s).astype(self.itype))
            return np.concatenate(found)
        lb2 = np.empty(len(sub), np.float32)
        _sq_dists(c, np.take(self.rows, sub, axis=0), lb2)
        lb2 -= self.err
        return sub[lb2 < mind2[sub]]


class Clusters:
    """Every not-yet-picked candidate, grouped by its nearest centre, with its squared distance to it.

    The incremental nearest-centre index k-center greedy runs on; the diversity strategy
    (:mod:`lightly_tasks.strategies`) drives it with its own pick order.

    Per candidate: ``mind2`` (N,) float32, the squared distance to the nearest centre (0 once picked, inf
    before any centre), and ``owner`` (N,) the cluster of that centre (-1 once picked). Per cluster t: its
    centre ``anchors[t]`` (D,); ``members[t]``, candidate indices that include all it owns plus ``stale[t]``
    entries that moved away since (dropped lazily, so a step rebuilds no list); ``radius2[t]``, an upper
    bound on the largest ``mind2`` it owns (-1 when empty), exact, with ``argpt[t]`` the lowest index
    attaining it, unless ``dirty[t]``.
    """

    def __init__(self, x: np.ndarray, chunk_size: int) -> None:
        n, d = x.shape
        self.x = x
        self.chunk = chunk_size
        self.itype = np.int32 if n < 2**31 else np.int64
        self.mind2 = np.full(n, np.inf, np.float32)
        self.owner = np.zeros(n, self.itype)
        self.anchors = np.empty((0, d), np.float32)
        self.radius2 = np.empty(0, np.float32)
        self.argpt = np.empty(0, np.int64)
        self.lens = np.empty(0, np.int64)
        self.stale = np.empty(0, np.int64)
        self.dirty = np.empty(0, bool)
        self.members: list[np.ndarray] = []
        self.size = 0
        self.block = np.empty((max(1, min(chunk_size, n, _BLOCK_BYTES // (4 * d))), d), np.float32)
        self.sketches = _Sketches(x, max(1, len(self.block) // 4)) if d >= _SKETCH_MIN_D and n else None

    def seed(self, centres: np.ndarray) -> None:
        """Assign every candidate to its nearest initial centre among ``centres`` (M, D).

        faiss finds the nearest centre (chunked over candidates); the distance to it is then recomputed by
        differences, because faiss's expanded form loses precision near 0 (duplicates would not score 0).
        """
        labels = np.empty(len(self.x), np.int64)
        for s in range(0, len(self.x), self.chunk):
            e = min(s + self.chunk, len(self.x))
            labels[s:e] = faiss.knn(self.x[s:e], centres, 1)[1][:, 0]
            for b in range(s, e, len(self.block)):
                rows = self.block[: min(e - b, len(self.block))]
                np.take(centres, labels[b : b + len(rows)], axis=0, out=rows)
                rows -= self.x[b : b + len(rows)]
                self.mind2[b : b + len(rows)] = np.einsum("ij,ij->i", rows, rows)
        used, owner = np.unique(labels, return_inverse=True)
        self.owner[:] = owner
        order = np.argsort(owner, kind="stable").astype(self.itype)
        starts = np.searchsorted(owner[order], np.arange(len(used)))
        vals = self.mind2[order]
        top = np.maximum.reduceat(vals, starts)
        at_top = np.where(vals == np.repeat(top, np.diff(np.append(starts, len(order)))), order, len(order))
        self.anchors = centres[used]
        self.radius2 = top
        self.argpt = np.minimum.reduceat(at_top, starts).astype(np.int64)
        self.members = np.split(order, starts[1:])
        self.lens = np.diff(np.append(starts, len(order))).astype(np.int64)
        self.stale = np.zeros(len(used), np.int64)
        self.dirty = np.zeros(len(used), bool)
        self.size = len(used)

    def farthest(self) -> tuple[int, int, float]:
        """(cluster, candidate, distance) of the candidate farthest from all centres, lowest index on ties."""
        if self.size == 0:
            return -1, 0, math.inf
        while True:
            radius2 = self.radius2[: self.size]
            top = np.flatnonzero(radius2 == radius2.max())
            loose = top[self.dirty[top]]
            if not len(loose):
                break
            for t in loose:
                self._refresh(t)
        home = int(top[np.argmin(self.argpt[top])])
        return home, int(self.argpt[home]), float(np.sqrt(radius2[home]))

    def add_centre(self, pick: int, home: int) -> None:
        """Make candidate ``pick`` (owned by cluster ``home``, -1 if none) a centre; move what it wins."""
        c = self.x[pick]
        if self.size == 0:
            _sq_dists(c, self.x, self.mind2)
            self.mind2[pick] = 0
            self.owner[pick] = -1
            n = len(self.x)
            self._append(
                c, np.r_[np.arange(pick, dtype=self.itype), np.arange(pick + 1, n, dtype=self.itype)]
            )
            return
        self.mind2[pick] = 0
        self.owner[pick] = -1
        self.stale[home] += 1
        self.dirty[home] = True
        sub = self._contenders(pick)
        if len(sub) > _STREAM_FRACTION * len(self.x):
            del sub  # exact distances to every candidate instead: the contender list is not needed
            d2 = _sq_dists(c, self.x, np.empty(len(self.x), np.float32))
            moved = np.flatnonzero(d2 < self.mind2).astype(self.itype)
            d2 = d2[moved]
        else:
            d2 = _sq_dists_at(c, self.x, sub, self.block)
            better = d2 < self.mind2[sub]
            moved, d2 = sub[better].astype(self.itype), d2[better]
        self.mind2[moved] = d2
        losers = self.owner[moved]
        self.stale[: self.size] += np.bincount(losers, minlength=self.size)
        self.dirty[losers] = True
        self.owner[moved] = self.size
        self._append(c, moved)
        for t in np.flatnonzero(2 * self.stale[: self.size] > self.lens[: self.size]):
            self._refresh(t)
        if self.size > 64 and 2 * np.count_nonzero(self.lens[: self.size] == 0) > self.size:
            self._drop_empty()

    def _contenders(self, pick: int) -> np.ndarray:
        """Sorted candidates that the new centre ``x[pick]`` may be closer to than their nearest centre."""
        dcc2 = np.empty(self.size + 1, np.float32)
        _sq_dists(self.x[pick], self.anchors[: self.size], dcc2[:-1])
        dcc2 *= 0.25 * (1 - _SLACK)
        dcc2[-1] = np.inf
        hit = np.flatnonzero(dcc2[:-1] < self.radius2[: self.size])
        lens = self.lens[hit]
        if lens.sum() > _DENSE_FRACTION * len(self.x):
            if self.sketches is not None:
                return self.sketches.contend(pick, None, self.mind2)
            return np.flatnonzero(dcc2[self.owner] < self.mind2)
        if not len(hit):
            return np.empty(0, self.itype)
        idx = np.concatenate([self.members[t] for t in hit])
        owner = self.owner[idx]
        live = owner == np.repeat(hit.astype(self.itype), lens)
        live &= dcc2[owner] < self.mind2[idx]
        sub = idx[live]
        if self.sketches is not None:
            sub = self.sketches.contend(pick, sub, self.mind2)
        return sub

    def _refresh(self, t: int) -> None:
        """Drop the stale members of cluster ``t`` and make its radius and farthest member exact."""
        m = self.members[t]
        if self.stale[t]:
            m = m[self.owner[m] == t]
            self.members[t] = m
            self.lens[t] = len(m)
            self.stale[t] = 0
        self.dirty[t] = False
        if not len(m):
            self.radius2[t], self.argpt[t] = -1, -1
            return
        vals = self.mind2[m]
        top = vals.max()
        self.radius2[t], self.argpt[t] = top, m[vals == top].min()

    def _append(self, c: np.ndarray, members: np.ndarray) -> None:
        """Add a cluster with centre ``c`` (D,) owning ``members``, growing the arrays geometrically."""
        if self.size == len(self.radius2):
            cap = max(16, 2 * self.size)
            self.anchors = np.resize(self.anchors, (cap, self.x.shape[1]))
            self.radius2, self.argpt = np.resize(self.radius2, cap), np.resize(self.argpt, cap)
            self.lens, self.stale = np.resize(self.lens, cap), np.resize(self.stale, cap)
            self.dirty = np.resize(self.dirty, cap)
        t = self.size
        self.anchors[t] = c
        self.members.append(members)
        self.lens[t], self.stale[t] = len(members), 0
        self.size += 1
        self._refresh(t)

    def _drop_empty(self) -> None:
        """Remove empty clusters and renumber ``owner``, so per-step work follows the live ones."""
        for t in np.flatnonzero(self.stale[: self.size]):
            self._refresh(t)
        live = np.flatnonzero(self.lens[: self.size] > 0)
        renumber = np.full(self.size + 1, -1, self.itype)
        renumber[live] = np.arange(len(live), dtype=self.itype)
        self.owner = renumber[self.owner]
        self.anchors, self.radius2, self.argpt = self.anchors[live], self.radius2[live], self.argpt[live]
        self.lens, self.stale, self.dirty = self.lens[live], self.stale[live], self.dirty[live]
        self.members = [self.members[t] for t in live]
        self.size = len(live)
