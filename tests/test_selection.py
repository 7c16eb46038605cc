"""k-center greedy: the picks of brute force on every code path, stopping conditions, edge cases."""

from __future__ import annotations

import numpy as np
import pytest

from lightly_tasks.selection import Selection, StoppingCondition, kcenter_greedy


def brute_force(x: np.ndarray, k: int, existing: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Reference farthest-first: (k,) picks and their distances, one full float32 pass per pick."""
    mind2 = np.full(len(x), np.inf, np.float32)
    for e in [] if existing is None else existing:
        mind2 = np.minimum(mind2, ((x - e) ** 2).sum(axis=1))
    picked = np.zeros(len(x), bool)
    picks, dists = [], []
    for _ in range(min(k, len(x))):
        p = int(np.argmax(np.where(picked, -np.inf, mind2)))
        picks.append(p)
        dists.append(np.sqrt(mind2[p]))
        picked[p] = True
        mind2 = np.minimum(mind2, ((x - x[p]) ** 2).sum(axis=1))
    return np.asarray(picks), np.asarray(dists, np.float32)


def assert_brute_force(x: np.ndarray, sel: Selection, existing: np.ndarray | None = None) -> None:
    picks, dists = brute_force(x, len(sel.indices), existing)
    np.testing.assert_array_equal(sel.indices, picks)
    np.testing.assert_allclose(sel.distances, dists, rtol=1e-5, atol=1e-6)
    assert sel.indices.dtype == np.int64 and sel.distances.dtype == np.float32


def blobs(n: int, d: int, seed: int, n_centres: int = 12, spread: float = 0.15) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_centres, d))
    x = centres[rng.integers(0, n_centres, n)] + spread * rng.standard_normal((n, d))
    return x.astype(np.float32)


def curve(n: int, d: int, seed: int) -> np.ndarray:
    """Points near a random smooth closed curve in d dims: low intrinsic dimension, so pruning bites."""
    rng = np.random.default_rng(seed)
    t = rng.uniform(0, 2 * np.pi, n)
    freqs = rng.standard_normal((6, d))
    x = sum(np.outer(np.sin((i + 1) * t + i), freqs[i]) / (i + 1) for i in range(6))
    return (x + 0.01 * rng.standard_normal((n, d))).astype(np.float32)


@pytest.mark.parametrize("d", [8, 48])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("kind", ["uniform", "blobs"])
def test_same_picks_as_brute_force(kind: str, seed: int, d: int) -> None:
    x = blobs(2000, d, seed) if kind == "blobs" else np.random.default_rng(seed).random((2000, d), np.float32)
    sel = kcenter_greedy(x, stop=StoppingCondition(n_samples=300))
    assert sel.indices[0] == 0 and np.isinf(sel.distances[0])
    assert_brute_force(x, sel)


@pytest.mark.parametrize("d", [8, 48])
@pytest.mark.parametrize("seed", [3, 4])
def test_same_picks_as_brute_force_with_existing(seed: int, d: int) -> None:
    x = blobs(2000, d, seed)
    existing = blobs(40, d, seed, spread=0.3)
    sel = kcenter_greedy(x, existing=existing, stop=StoppingCondition(n_samples=200))
    assert np.isfinite(sel.distances).all()
    assert_brute_force(x, sel, existing)


@pytest.mark.parametrize("d", [3, 32])
def test_low_dimensional_data_where_clusters_prune(d: int) -> None:
    x = curve(20000, d, seed=d)
    sel = kcenter_greedy(x, stop=StoppingCondition(n_samples=400))
    assert_brute_force(x, sel)
    assert np.all(np.diff(sel.distances[1:]) <= 0), "farthest-first distances never increase"


def test_many_existing_centres_each_owning_few_candidates() -> None:
    rng = np.random.default_rng(5)
    x = rng.random((3000, 6), np.float32)
    existing = rng.random((4000, 6), np.float32)
    sel = kcenter_greedy(x, existing=existing, stop=StoppingCondition(n_samples=600))
    assert_brute_force(x, sel, existing)


def test_d512_and_small_chunks_give_the_same_result() -> None:
    x = blobs(1500, 512, seed=6, spread=0.5)
    existing = blobs(30, 512, seed=7)
    sel = kcenter_greedy(x, existing=existing, stop=StoppingCondition(n_samples=120))
    assert_brute_force(x, sel, existing)
    small = kcenter_greedy(x, existing=existing, stop=StoppingCondition(n_samples=120), chunk_size=37)
    np.testing.assert_array_equal(small.indices, sel.indices)
    np.testing.assert_array_equal(small.distances, sel.distances)


def test_deterministic_and_independent_of_chunk_size() -> None:
    x = curve(5000, 24, seed=8)
    runs = [kcenter_greedy(x, stop=StoppingCondition(n_samples=250), chunk_size=c) for c in (65536, 1000, 64)]
    for run in runs[1:]:
        np.testing.assert_array_equal(run.indices, runs[0].indices)
        np.testing.assert_array_equal(run.distances, runs[0].distances)


def test_accepts_float64_and_non_contiguous_input() -> None:
    x = blobs(800, 16, seed=9)
    ref = kcenter_greedy(x, stop=StoppingCondition(n_samples=50))
    wide = np.zeros((800, 32), np.float64)
    wide[:, ::2] = x
    sel = kcenter_greedy(wide[:, ::2], stop=StoppingCondition(n_samples=50))
    np.testing.assert_array_equal(sel.indices, ref.indices)


def test_ties_go_to_the_lowest_index() -> None:
    x = np.array([[0, 0], [1, 0], [-1, 0], [0, 1], [0, -1]], np.float32)
    sel = kcenter_greedy(x, stop=StoppingCondition(n_samples=5))
    np.testing.assert_array_equal(sel.indices, [0, 1, 2, 3, 4])
    np.testing.assert_array_equal(sel.distances[1:], [1, 1, 1, 1])


def test_n_samples() -> None:
    sel = kcenter_greedy(blobs(500, 8, seed=10), stop=StoppingCondition(n_samples=17))
    assert len(sel.indices) == 17 and sel.stopped_by == "n_samples"
    assert len(set(sel.indices.tolist())) == 17


def test_n_samples_above_n_selects_everything() -> None:
    x = blobs(60, 8, seed=11)
    sel = kcenter_greedy(x, stop=StoppingCondition(n_samples=1000))
    assert sel.stopped_by == "exhausted"
    assert sorted(sel.indices.tolist()) == list(range(60))
    assert_brute_force(x, sel)


@pytest.mark.parametrize(
    ("n", "p", "expected"), [(10, 0.3, 3), (10, 0.25, 3), (1000, 0.001, 1), (7, 1.0, 7), (3, 1e-7, 1)]
)
def test_proportion_rounds_up(n: int, p: float, expected: int) -> None:
    x = np.random.default_rng(n).random((n, 4), np.float32)
    sel = kcenter_greedy(x, stop=StoppingCondition(proportion_samples=p))
    assert len(sel.indices) == expected and sel.stopped_by == "proportion_samples"


def test_min_distance_stops_before_the_first_closer_pick() -> None:
    x = blobs(3000, 8, seed=12)
    full_picks, full_dists = brute_force(x, 400)
    sel = kcenter_greedy(x, stop=StoppingCondition(min_distance=0.5))
    k = len(sel.indices)
    assert sel.stopped_by == "min_distance" and 1 < k < 400
    np.testing.assert_array_equal(sel.indices, full_picks[:k])
    assert np.all(sel.distances >= 0.5) and full_dists[k] < 0.5


def test_min_distance_is_inclusive_and_applies_to_the_first_pick_with_existing() -> None:
    x = np.array([[0.0], [1.0], [3.0], [6.0]], np.float32)
    sel = kcenter_greedy(x, stop=StoppingCondition(min_distance=3.0))
    np.testing.assert_array_equal(sel.indices, [0, 3, 2])
    near = kcenter_greedy(x, existing=np.array([[3.0]], np.float32), stop=StoppingCondition(min_distance=4.0))
    assert len(near.indices) == 0 and near.stopped_by == "min_distance"


def test_first_condition_met_wins() -> None:
    x = blobs(1000, 8, seed=13)
    by_count = kcenter_greedy(x, stop=StoppingCondition(n_samples=5, min_distance=0.01))
    assert by_count.stopped_by == "n_samples" and len(by_count.indices) == 5
    by_distance = kcenter_greedy(
        x, stop=StoppingCondition(n_samples=900, proportion_samples=0.95, min_distance=1.0)
    )
    assert by_distance.stopped_by == "min_distance" and len(by_distance.indices) < 900
    by_proportion = kcenter_greedy(x, stop=StoppingCondition(n_samples=900, proportion_samples=0.01))
    assert by_proportion.stopped_by == "proportion_samples" and len(by_proportion.indices) == 10


def test_no_condition_or_bad_values_raise() -> None:
    x = np.zeros((3, 2), np.float32)
    for bad in (
        StoppingCondition(),
        StoppingCondition(proportion_samples=0.0),
        StoppingCondition(proportion_samples=1.5),
        StoppingCondition(n_samples=-1),
        StoppingCondition(min_distance=-0.1),
    ):
        with pytest.raises(ValueError):
            kcenter_greedy(x, stop=bad)
    with pytest.raises(ValueError, match="dimension"):
        kcenter_greedy(x, existing=np.zeros((2, 3), np.float32), stop=StoppingCondition(n_samples=1))
    with pytest.raises(ValueError, match="2-D"):
        kcenter_greedy(np.zeros(3, np.float32), stop=StoppingCondition(n_samples=1))
    with pytest.raises(ValueError, match="chunk_size"):
        kcenter_greedy(x, stop=StoppingCondition(n_samples=1), chunk_size=0)


@pytest.mark.parametrize("existing", [None, np.ones((4, 16), np.float32)])
def test_empty_candidates(existing: np.ndarray | None) -> None:
    sel = kcenter_greedy(
        np.empty((0, 16), np.float32), existing=existing, stop=StoppingCondition(n_samples=5)
    )
    assert sel.stopped_by == "exhausted" and sel.indices.shape == (0,) and sel.distances.shape == (0,)


@pytest.mark.parametrize("d", [4, 32])
def test_duplicates_are_not_picked_once_min_distance_is_positive(d: int) -> None:
    rng = np.random.default_rng(14)
    base = rng.standard_normal((300, d)).astype(np.float32)
    existing = base[:50]
    x = np.concatenate([base, base[rng.integers(0, 300, 700)]])
    sel = kcenter_greedy(x, existing=existing, stop=StoppingCondition(min_distance=1e-6))
    rows = {x[i].tobytes() for i in sel.indices}
    assert len(rows) == len(sel.indices) == 250, "each distinct new row once, none already in the dataset"
    assert not rows & {e.tobytes() for e in existing}
    assert sel.stopped_by == "min_distance" and np.all(sel.distances > 0)
    everything = kcenter_greedy(x, stop=StoppingCondition(n_samples=len(x) + 5))
    assert everything.stopped_by == "exhausted" and np.count_nonzero(everything.distances == 0) == 700


def test_existing_centres_steer_picks_to_what_the_dataset_lacks() -> None:
    rng = np.random.default_rng(15)
    cluster_a = rng.normal(0.0, 0.1, (400, 8)).astype(np.float32)
    cluster_b = rng.normal(5.0, 0.1, (400, 8)).astype(np.float32)
    x = np.concatenate([cluster_a, cluster_b])
    existing = rng.normal(0.0, 0.1, (200, 8)).astype(np.float32)
    sel = kcenter_greedy(x, existing=existing, stop=StoppingCondition(n_samples=20))
    assert np.all(sel.indices >= 400), "cluster A is covered by the dataset, so picks come from B"
    without = kcenter_greedy(x, stop=StoppingCondition(n_samples=20))
    assert np.any(without.indices < 400)
