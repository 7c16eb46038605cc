"""Coverage-capped representative selection: k-center's coverage radius with facility location's typical picks.

Farthest-first (k-center) selection covers the space best but its picks are the outliers; facility location
and k-means pick typical points but leave the sparse regions far from any pick. This module keeps both:

**Objective.** Pick ``S`` (k of the N candidates) to minimise the total distance of the candidates to their
nearest pick or existing sample, ``sum_x d(x, S + E)`` (the k-median cost; the same as maximising facility
location with similarity ``C - d``), subject to the coverage cap ``max_x d(x, S + E) <= R``, where
``R = (1 + radius_slack) * r`` and ``r`` is the coverage radius of the farthest-first traversal
(:func:`lightly_tasks.selection.kcenter_greedy`) with the same ``k`` and existing samples ``E``. With the
default slack 0 the result never covers worse than k-center (up to float32 rounding).

**Algorithm.** Start from the farthest-first picks (feasible by construction), then improve them by swaps
(one pick out, one candidate in) that lower the cost and keep the cap, in rounds, as PAM / FasterPAM do
but without the N x N matrix. Every candidate keeps its nearest and second-nearest centre (picks and
existing samples) and the distances to them. In a round, each cluster (the candidates nearest to one
centre) proposes ``per_cluster`` of its members (half nearest to its mean, half drawn with ``seed``); the
change of cost of swapping one in is computed exactly for the removal of each pick among the ``neighbours``
nearest centres (from their members; a cluster over 4x the mean size is read strided, for the gain only),
and conservatively for the removal of the cheapest pick whose members all have a second centre within the
cap. Candidates outside the neighbourhood are counted as not gaining, so a computed improvement is a lower
bound on the true one, and the cap check (every candidate of the removed pick with no second centre within
the cap must be within it of the new one) is exact. Each cluster's best improving swap is collected and a
batch taken in order of gain, skipping swaps that would remove both nearest centres of some candidate (so
every cap check still holds for the whole batch) or that share the two nearest centres of their clusters
with an earlier one (so gains do not overlap much); the nearest two centres are updated incrementally and
the batch is checked (cost lower, cap kept), else its better half is retried, down to one swap, which is
exactly valid. A cluster proposes again only when a centre of its neighbourhood changed. The search stops
when no swap gains more than ``1e-6`` of the cost, or after ``max_rounds``. Existing samples are centres
that are never removed: they cover and represent candidates, so the picks go where the dataset lacks
samples. Deterministic for a seed (on the same machine and BLAS thread count).

**Complexity** (N candidates, M existing, k picks, D dimensions, L = ``neighbours``, m = ``per_cluster``):
the farthest-first start (see selection.py), one nearest-two-centres pass ``O(N (M + k) D)``, then per
round at most ``O(N m L D)`` for the proposals (a bounded area per cluster; clusters with an unchanged
neighbourhood skip) and ``O((N b + n_a (M + k)) D)`` for the update, b the swaps applied and n_a the
candidates whose nearest or second-nearest centre was swapped out. Measured (``bench/selection_quality.py
--scale``, 2 shared cores): rounds dominate; at 1M x 64, k = 1000, 20 rounds took ~440 CPU seconds,
~20x the farthest-first start. **Memory**: no N x N matrix; per candidate its nearest two centres and
distances (16 bytes), a saved copy of them for the batch check, the cluster order, the centre pairs and the
merge temporaries of an update, plus distance blocks of at most 16 MiB: measured peak ~250 bytes per
candidate (243 MiB at 1M, the farthest-first start's 67 MiB included).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lightly_tasks.selection import StoppingCondition, kcenter_greedy

# A swap must lower the cost by more than this share of it to count as an improvement.
_REL_TOL = 1e-6
# Swaps applied in one round must not share any of the nearest _CONFLICT centres of their two clusters.
_CONFLICT = 2
# Members of a neighbouring cluster that a proposal reads: _AREA_FACTOR times the mean cluster size, at
# least _AREA_MIN; a larger cluster is read strided.
_AREA_FACTOR = 4
_AREA_MIN = 256
# Entries of a candidates x centres distance block (16 MiB of float32).
_BLOCK_FLOATS = 1 << 22
# Relative float32 margin on the cap when the round check compares the radius with it.
_CAP_SLACK = 1e-5


@dataclass(frozen=True)
class Representatives:
    """The picks of :func:`representative_greedy` and what they achieve.

    ``indices`` (k,) int64 into the candidates, the pick representing most candidates first; ``members``
    (k,) int64 how many candidates each represents (nearest to it; ties to the lower centre); ``radius``
    the largest distance of a candidate to its nearest pick or existing sample; ``kcenter_radius`` that of
    the farthest-first start; ``cap`` the radius the search kept to; ``mean_distance`` the mean distance
    of a candidate to its nearest pick or existing sample; ``rounds`` and ``swaps`` of the search.
    """

    indices: np.ndarray
    members: np.ndarray
    radius: float
    kcenter_radius: float
    cap: float
    mean_distance: float
    rounds: int
    swaps: int


def representative_greedy(
    candidates: np.ndarray,
    *,
    n_samples: int,
    existing: np.ndarray | None = None,
    radius_slack: float = 0.0,
    neighbours: int = 8,
    per_cluster: int = 8,
    max_rounds: int = 20,
    seed: int = 0,
    chunk_size: int = 65536,
) -> Representatives:
    """Pick ``n_samples`` of ``candidates`` (N, D) that represent them best within k-center's coverage radius.

    ``existing`` (M, D) are the samples already in the dataset: they cover and represent candidates and are
    never removed. ``radius_slack`` >= 0 lets the radius exceed farthest-first's by that fraction in exchange
    for more typical picks. ``neighbours`` and ``per_cluster`` set how wide each round searches (see the
    module docstring); ``chunk_size`` caps the rows handled at once. Asking for N or more picks selects all.
    """
    if n_samples < 0:
        raise ValueError(f"n_samples must be >= 0, got {n_samples}")
    if not radius_slack >= 0:
        raise ValueError(f"radius_slack must be >= 0, got {radius_slack}")
    if neighbours < 1 or per_cluster < 1 or max_rounds < 0 or chunk_size < 1:
        raise ValueError("neighbours, per_cluster and chunk_size must be positive and max_rounds >= 0")
    x = np.ascontiguousarray(candidates, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"candidates must be 2-D (rows, D), got shape {x.shape}")
    e = np.empty((0, x.shape[1]), np.float32) if existing is None else np.ascontiguousarray(existing, np.float32)
    if e.ndim != 2 or e.shape[1] != x.shape[1]:
        raise ValueError(f"existing must be 2-D with dimension {x.shape[1]}, got shape {e.shape}")
    k = min(n_samples, len(x))
    start = kcenter_greedy(x, existing=e if len(e) else None, stop=StoppingCondition(n_samples=k))
    search = _Search(x, e, start.indices, chunk_size)
    r0 = float(search.d1.max()) if len(x) else 0.0
    cap = r0 * (1 + radius_slack)
    rounds = swaps = 0
    if 0 < k < len(x):
        for rounds in range(1, max_rounds + 1):
            applied = search.round(cap, neighbours, per_cluster, np.random.default_rng((seed, rounds)))
            swaps += applied
            if not applied:
                break
    return search.result(r0, cap, rounds, swaps)


def _run_sums(values: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Row sums (m, len(starts)) of ``values`` (m, n) over the column runs ``[starts[i], ends[i])``."""
    total = np.zeros((len(values), values.shape[1] + 1), np.float64)
    np.cumsum(values, axis=1, out=total[:, 1:])
    return total[:, ends] - total[:, starts]


class _Search:
    """Centres (existing samples first, then the picks) and every candidate's nearest two of them.

    ``a1``/``a2`` (N,) int32 centre numbers (-1: none), ``d1``/``d2`` (N,) float32 distances to them
    (``inf`` when there is no such centre); ``picks`` (k,) holds the candidate index of each pick, centre
    ``M + i`` being ``picks[i]``; ``dirty`` (M + k,) marks centres whose cluster changed since last round.
    """

    def __init__(self, x: np.ndarray, existing: np.ndarray, picks: np.ndarray, chunk_size: int) -> None:
        self.x, self.m, self.chunk = x, len(existing), chunk_size
        self.picks = picks.astype(np.int64)
        self.centres = np.concatenate([existing, x[self.picks]]) if len(existing) else x[self.picks].copy()
        self.sq = np.einsum("ij,ij->i", x, x)
        self.is_pick = np.zeros(len(x), bool)
        self.is_pick[self.picks] = True
        self.dirty = np.ones(len(self.centres), bool)
        n = len(x)
        self.a1, self.a2 = np.full(n, -1, np.int32), np.full(n, -1, np.int32)
        self.d1, self.d2 = np.full(n, np.inf, np.float32), np.full(n, np.inf, np.float32)
        if len(self.centres):
            self._nearest_two(np.arange(n))

    # -- nearest centres ------------------------------------------------------------------------------
    def _knn(self, rows: np.ndarray, centres: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Distances (n, k) float32 and centre numbers (n, k) int32 of the ``k`` (1 or 2) nearest of ``centres``
        to each candidate in ``rows``, nearest first, padded with inf / -1 where there are fewer centres.

        Squared distances by ``|x|^2 + |c|^2 - 2 x.c`` over blocks of at most ``_BLOCK_FLOATS`` entries.
        """
        n = len(rows)
        dist, num = np.full((n, k), np.inf, np.float32), np.full((n, k), -1, np.int32)
        kk = min(k, len(centres))
        if not kk:
            return dist, num
        sq_c = np.einsum("ij,ij->i", centres, centres)
        step = max(1, min(self.chunk, _BLOCK_FLOATS // len(centres)))
        for s in range(0, n, step):
            sub = rows[s : s + step]
            d2 = self.x[sub] @ centres.T
            d2 *= -2
            d2 += self.sq[sub][:, None]
            d2 += sq_c
            at = np.arange(len(sub))
            for i in range(kk):
                best = np.argmin(d2, axis=1)
                dist[s : s + len(sub), i] = np.sqrt(np.maximum(d2[at, best], 0))
                num[s : s + len(sub), i] = best
                d2[at, best] = np.inf
        return dist, num

    def _nearest_two(self, rows: np.ndarray) -> None:
        """Recompute the nearest two centres of the candidates ``rows`` among all centres."""
        dist, num = self._knn(rows, self.centres, 2)
        self.d1[rows], self.d2[rows] = dist[:, 0], dist[:, 1]
        self.a1[rows], self.a2[rows] = num[:, 0], num[:, 1]

    def _replace(self, slots: np.ndarray, new_picks: np.ndarray) -> None:
        """Put candidates ``new_picks`` in centre slots ``slots`` and update every candidate's nearest two."""
        self.is_pick[self.picks[slots - self.m]] = False
        self.picks[slots - self.m] = new_picks
        self.is_pick[new_picks] = True
        self.centres[slots] = self.x[new_picks]
        touched = np.zeros(len(self.centres), bool)
        touched[slots] = True
        lost = np.flatnonzero(touched[self.a1] | (self.a2 >= 0) & touched[np.maximum(self.a2, 0)])
        self._nearest_two(lost)
        keep = np.ones(len(self.x), bool)
        keep[lost] = False
        rest = np.flatnonzero(keep)
        dist, num = self._knn(rest, self.centres[slots], 2)
        num = np.where(num >= 0, slots[np.maximum(num, 0)], -1).astype(np.int32)
        d = np.stack([self.d1[rest], self.d2[rest], dist[:, 0], dist[:, 1]], axis=1)
        a = np.stack([self.a1[rest], self.a2[rest], num[:, 0], num[:, 1]], axis=1)
        top = np.argsort(d, axis=1, kind="stable")[:, :2]
        d, a = np.take_along_axis(d, top, 1), np.take_along_axis(a, top, 1)
        self.d1[rest], self.d2[rest], self.a1[rest], self.a2[rest] = d[:, 0], d[:, 1], a[:, 0], a[:, 1]

    # -- one round of swaps -----------------------------------------------------------------------------
    def round(self, cap: float, neighbours: int, per_cluster: int, rng: np.random.Generator) -> int:
        """Propose one swap per cluster, apply the compatible improving ones; the number of swaps applied."""
        n_centres = len(self.centres)
        order = np.argsort(self.a1, kind="stable")
        bounds = np.searchsorted(self.a1[order], np.arange(n_centres + 1))
        cost = float(self.d1.sum(dtype=np.float64))
        gain_d2 = np.where(np.isfinite(self.d2), self.d2, np.float32(np.finfo(np.float32).max / 4))
        removal = np.bincount(self.a1, weights=gain_d2 - self.d1, minlength=n_centres)
        n_crit = np.bincount(self.a1, weights=self.d2 > cap, minlength=n_centres)
        free = np.flatnonzero((np.arange(n_centres) >= self.m) & (n_crit == 0))
        free = free[np.argsort(removal[free], kind="stable")]
        homes = np.flatnonzero(np.diff(bounds) > 0)
        near = self._neighbourhoods(homes, neighbours)
        # Clusters whose neighbourhood did not change since they last proposed nothing are skipped.
        homes = [h for h in homes if self.dirty[near[int(h)]].any()]
        self.dirty[:] = False
        area_cap = max(_AREA_MIN, _AREA_FACTOR * -(-len(self.x) // n_centres))
        proposals = []
        for h in homes:
            members = order[bounds[h] : bounds[h + 1]]
            found = self._propose(int(h), members, near[int(h)], order, bounds, gain_d2, removal, free, cap,
                                  per_cluster, rng, area_cap)
            if found is not None and found[0] < -_REL_TOL * cost:
                proposals.append(found)
        if not proposals:
            return 0
        proposals.sort(key=lambda p: (p[0], p[1]))
        # A batch never removes both nearest centres of a candidate (then each swap's cap check holds for
        # the batch), and its swaps do not share nearby centres (then their gains mostly add up).
        pairs = self.a1.astype(np.int64) * n_centres + self.a2
        pairs = np.unique(np.concatenate([pairs, self.a2.astype(np.int64) * n_centres + self.a1])[
            np.concatenate([self.a2, self.a2]) >= 0])
        first = np.searchsorted(pairs // n_centres, np.arange(n_centres + 1))
        taken, blocked = np.zeros(n_centres, bool), np.zeros(n_centres, bool)
        batch = []
        for _, pick, slot, h in proposals:
            area = np.union1d(near[h][:_CONFLICT], near.get(slot, np.array([slot]))[:_CONFLICT])
            if not taken[area].any() and not blocked[slot]:
                taken[area] = True
                blocked[slot] = True
                blocked[pairs[first[slot] : first[slot + 1]] % n_centres] = True
                batch.append((pick, slot))
        saved = (self.picks.copy(), self.is_pick.copy(), self.centres.copy(), self.a1.copy(), self.a2.copy(),
                 self.d1.copy(), self.d2.copy())
        while True:
            self._apply(batch)
            if len(batch) == 1 or (
                self.d1.max() <= cap * (1 + _CAP_SLACK) and float(self.d1.sum(dtype=np.float64)) < cost
            ):
                changed = (self.a1 != saved[3]) | (self.a2 != saved[4])
                for a in (self.a1[changed], self.a2[changed], saved[3][changed], saved[4][changed]):
                    self.dirty[a[a >= 0]] = True
                self.dirty[[slot for _, slot in batch]] = True
                return len(batch)
            # The gains of some swaps overlapped: retry with the better half (one swap alone is exact).
            self.picks, self.is_pick, self.centres, self.a1, self.a2, self.d1, self.d2 = (a.copy() for a in saved)
            self.dirty[:] = False
            batch = batch[: len(batch) // 2]

    def _neighbourhoods(self, homes: np.ndarray, neighbours: int) -> dict[int, np.ndarray]:
        """The ``neighbours`` centres nearest to each home centre (itself first), by centre number.

        Homes go in blocks of at most ``_BLOCK_FLOATS`` distances, so memory stays O(block) however many
        centres (picks plus existing samples) there are, not O(homes x centres).
        """
        sq_c = np.einsum("ij,ij->i", self.centres, self.centres)
        kk = min(neighbours, len(self.centres))
        step = max(1, _BLOCK_FLOATS // max(1, len(self.centres)))
        near: dict[int, np.ndarray] = {}
        for start in range(0, len(homes), step):
            block = homes[start : start + step]
            d2 = self.centres[block] @ self.centres.T
            d2 *= -2
            d2 += sq_c[block][:, None]
            d2 += sq_c
            d2[np.arange(len(block)), block] = -np.inf
            if kk < len(self.centres):
                top = np.argpartition(d2, kk - 1, axis=1)[:, :kk]
            else:
                top = np.argsort(d2, axis=1)
            top = np.take_along_axis(top, np.argsort(np.take_along_axis(d2, top, 1), axis=1, kind="stable"), 1)
            near.update((int(h), row) for h, row in zip(block, top, strict=True))
        return near

    def _apply(self, batch: list[tuple[int, int]]) -> None:
        picks = np.array([p for p, _ in batch], np.int64)
        slots = np.array([s for _, s in batch], np.int64)
        self._replace(slots, picks)

    def _propose(
        self,
        h: int,
        members: np.ndarray,
        near: np.ndarray,
        order: np.ndarray,
        bounds: np.ndarray,
        gain_d2: np.ndarray,
        removal: np.ndarray,
        free: np.ndarray,
        cap: float,
        per_cluster: int,
        rng: np.random.Generator,
        area_cap: int,
    ) -> tuple[float, int, int, int] | None:
        """The best swap (change of cost, candidate in, centre slot out, home) bringing in one of cluster
        ``h``'s members, or None when no swap is allowed."""
        x = self.x
        pool = members[~self.is_pick[members]]
        if not len(pool):
            return None
        mean = x[pool].mean(axis=0)
        diff = x[pool] - mean
        by_mean = pool[np.argsort(np.einsum("ij,ij->i", diff, diff), kind="stable")]
        half = min(len(pool), max(1, per_cluster // 2))
        cands = by_mean[:half]
        rest = by_mean[half:]
        if len(rest) and per_cluster > half:
            cands = np.concatenate([cands, rng.choice(rest, size=min(len(rest), per_cluster - half), replace=False)])
        # The members of the neighbouring clusters; of a large one (other than h), an evenly strided share
        # only, which then counts towards the gain but is not considered for removal.
        runs, whole = [], np.ones(len(near), bool)
        for i, j in enumerate(near):
            run = order[bounds[j] : bounds[j + 1]]
            if j != h and len(run) > area_cap:
                run, whole[i] = run[:: -(-len(run) // area_cap)], False
            runs.append(run)
        area = np.concatenate(runs)
        xc = x[cands]
        dc = self.sq[cands][:, None] + self.sq[area][None, :] - 2 * (xc @ x[area].T)
        np.sqrt(np.maximum(dc, 0, out=dc), out=dc)
        d1, d2 = self.d1[area], gain_d2[area]
        shared = np.minimum(dc - d1, 0).sum(axis=1, dtype=np.float64)
        # Per-cluster sums over the area's contiguous runs, by differences of running sums.
        ends = np.cumsum([len(run) for run in runs])
        starts = np.concatenate([[0], ends[:-1]])
        change = _run_sums(np.minimum(dc, d2) - np.minimum(dc, d1), starts, ends)
        crit = (self.d2[area] > cap)[None, :] & (dc > cap)
        blocked = _run_sums(crit, starts, ends) > 0
        blocked |= ((near < self.m) | ~whole)[None, :]
        inside = np.where(blocked, np.inf, shared[:, None] + change)
        best_in = np.unravel_index(np.argmin(inside), inside.shape)
        result = (float(inside[best_in]), int(cands[best_in[0]]), int(near[best_in[1]]), h)
        # Removing any pick whose members all have a second centre within the cap: members of it in the
        # area counted in ``shared`` too only make the estimate larger than the true change.
        outside = int(free[0]) if len(free) else None
        if outside is not None:
            c = int(np.argmin(shared))
            delta = float(shared[c] + removal[outside])
            if delta < result[0]:
                result = (delta, int(cands[c]), outside, h)
        return result if np.isfinite(result[0]) else None

    def result(self, r0: float, cap: float, rounds: int, swaps: int) -> Representatives:
        """The picks ordered by how many candidates each represents, with the figures of the search."""
        counts = np.bincount(self.a1[self.a1 >= 0], minlength=len(self.centres))[self.m :]
        order = np.argsort(-counts, kind="stable")
        n = len(self.x)
        return Representatives(
            indices=self.picks[order],
            members=counts[order].astype(np.int64),
            radius=float(self.d1.max()) if n else 0.0,
            kcenter_radius=r0,
            cap=cap,
            mean_distance=float(self.d1.mean(dtype=np.float64)) if n else 0.0,
            rounds=rounds,
            swaps=swaps,
        )
