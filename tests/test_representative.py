"""Coverage-capped representative selection: the issue's digits target, the cap, existing samples, determinism."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits

from lightly_tasks.representative import representative_greedy
from lightly_tasks.selection import StoppingCondition, kcenter_greedy


def digits_pca64() -> tuple[np.ndarray, np.ndarray]:
    """The issue's embeddings: digits, PCA-64 (a rotation of the centred 64 pixels), L2-normalised."""
    pixels, labels = load_digits(return_X_y=True)
    x = pixels - pixels.mean(axis=0)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), labels


def nearest(x: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force float64 distance to, and index of, each row's nearest centre."""
    d = np.sqrt(((x[:, None, :].astype(np.float64) - centres[None, :, :]) ** 2).sum(axis=2))
    return d.min(axis=1), d.argmin(axis=1)


def blobs(n: int, d: int, seed: int) -> np.ndarray:
    """Gaussian blobs of different sizes and spreads, with a few far outliers."""
    rng = np.random.default_rng(seed)
    centres = 3 * rng.standard_normal((8, d))
    which = rng.choice(8, n, p=rng.dirichlet(np.ones(8)))
    x = centres[which] + rng.uniform(0.2, 1.0, 8)[which, None] * rng.standard_normal((n, d))
    x[:10] += 6 * rng.standard_normal((10, d))
    return x.astype(np.float32)


def test_digits_meets_the_issue_target_at_k50() -> None:
    x, labels = digits_pca64()
    result = representative_greedy(x, n_samples=50)
    dist, which = nearest(x, x[result.indices])
    accuracy = float((labels[result.indices][which] == labels).mean())
    kcenter = kcenter_greedy(x, stop=StoppingCondition(n_samples=50)).indices
    kc_dist, kc_which = nearest(x, x[kcenter])
    assert len(np.unique(result.indices)) == 50
    assert dist.max() <= 1.10, f"coverage radius {dist.max():.3f}"
    assert accuracy >= 0.93, f"1-NN accuracy {accuracy:.3f}"
    # Farthest-first covers as well but represents worse; the figures the result reports are the true ones.
    assert dist.max() <= kc_dist.max() * (1 + 1e-5)
    assert float((labels[kcenter][kc_which] == labels).mean()) < 0.9
    assert result.radius == pytest.approx(dist.max(), rel=1e-4)
    assert result.mean_distance == pytest.approx(dist.mean(), rel=1e-4)
    assert result.mean_distance < 0.9 * kc_dist.mean()
    assert result.members.sum() == len(x) and (np.diff(result.members) <= 0).all()


@pytest.mark.parametrize("slack", [0.0, 0.05])
def test_cap_holds_and_cost_beats_kcenter(slack: float) -> None:
    x = blobs(3000, 12, seed=1)
    result = representative_greedy(x, n_samples=40, radius_slack=slack)
    kcenter = kcenter_greedy(x, stop=StoppingCondition(n_samples=40)).indices
    dist, _ = nearest(x, x[result.indices])
    kc_dist, _ = nearest(x, x[kcenter])
    assert result.kcenter_radius == pytest.approx(kc_dist.max(), rel=1e-4)
    assert result.cap == pytest.approx(result.kcenter_radius * (1 + slack))
    assert dist.max() <= result.cap * (1 + 1e-5)
    assert dist.mean() < 0.85 * kc_dist.mean()
    assert result.swaps > 0


def test_existing_samples_cover_their_region() -> None:
    rng = np.random.default_rng(2)
    a = rng.standard_normal((1500, 8)).astype(np.float32)
    b = (rng.standard_normal((1500, 8)) + 20).astype(np.float32)
    x = np.concatenate([a, b])
    existing = a[rng.choice(1500, 30, replace=False)] + 0.01
    alone = representative_greedy(x, n_samples=30)
    assert (alone.indices < 1500).sum() >= 10, "without existing samples both blobs get picks"
    result = representative_greedy(x, n_samples=30, existing=existing)
    kc = kcenter_greedy(x, existing=existing, stop=StoppingCondition(n_samples=30)).indices
    # The blob the dataset already has gets picks only at its fringe, where the cap needs them.
    in_a = (result.indices < 1500).sum()
    assert in_a <= 3 and in_a <= (kc < 1500).sum(), result.indices
    dist, _ = nearest(x, np.concatenate([existing, x[result.indices]]))
    kc_dist, _ = nearest(x, np.concatenate([existing, x[kc]]))
    assert result.radius == pytest.approx(dist.max(), rel=1e-4)
    assert dist.max() <= kc_dist.max() * (1 + 1e-5)
    assert dist.mean() < kc_dist.mean()
    # Candidates nearer to an existing sample than to any pick are represented by it, not by a pick.
    by_picks = (nearest(x, x[result.indices])[0] < nearest(x, existing)[0]).sum()
    assert abs(int(result.members.sum()) - int(by_picks)) <= 2


def test_deterministic_for_a_seed() -> None:
    x = blobs(2500, 16, seed=3)
    first = representative_greedy(x, n_samples=60, seed=7)
    again = representative_greedy(x.copy(), n_samples=60, seed=7)
    np.testing.assert_array_equal(first.indices, again.indices)
    assert (first.radius, first.mean_distance, first.swaps) == (again.radius, again.mean_distance, again.swaps)
    other = representative_greedy(x, n_samples=60, seed=8)
    assert other.radius <= other.cap * (1 + 1e-5)


def test_edge_cases_and_bad_arguments() -> None:
    x = blobs(50, 4, seed=4)
    assert sorted(representative_greedy(x, n_samples=80).indices.tolist()) == list(range(50))
    none = representative_greedy(x, n_samples=0)
    assert len(none.indices) == 0 and none.radius == np.inf
    assert len(representative_greedy(x[:0], n_samples=5).indices) == 0
    with pytest.raises(ValueError, match="n_samples"):
        representative_greedy(x, n_samples=-1)
    with pytest.raises(ValueError, match="radius_slack"):
        representative_greedy(x, n_samples=3, radius_slack=-0.1)
    with pytest.raises(ValueError, match="existing"):
        representative_greedy(x, n_samples=3, existing=np.zeros((2, 5), np.float32))


def test_neighbourhoods_in_small_blocks_give_the_same_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    """Memory stays bounded with many centres: the neighbourhood search goes block by block, same result."""
    from lightly_tasks import representative

    x = np.random.default_rng(7).standard_normal((400, 8)).astype(np.float32)
    existing = np.random.default_rng(8).standard_normal((150, 8)).astype(np.float32)
    whole = representative_greedy(x, n_samples=60, existing=existing)
    search = representative._Search._neighbourhoods
    blocks: list[int] = []

    def in_small_blocks(self, homes, neighbours):  # only the neighbourhood search runs with tiny blocks
        with monkeypatch.context() as patch:
            patch.setattr(representative, "_BLOCK_FLOATS", 1000)  # one home per block with 210 centres
            blocks.append(len(homes))
            return search(self, homes, neighbours)

    monkeypatch.setattr(representative._Search, "_neighbourhoods", in_small_blocks)
    blocked = representative_greedy(x, n_samples=60, existing=existing)
    assert blocks and max(blocks) > 1, "several homes were searched, each block holding fewer"
    np.testing.assert_array_equal(blocked.indices, whole.indices)
