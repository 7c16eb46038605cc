"""Benchmark: how well k picks cover and represent a labeled set, per selection method; and their cost at scale.

Quality (default run). Embeddings: scikit-learn's digits (1,797 8x8 images, labels 0-9), PCA to ``dim``
components and then L2-normalised. ``digits-pca64`` is the issue's set: with 64 pixels, PCA-64 is a rotation
of the centred pixels, so this is "centre, then L2-normalise" (the normalisation that reproduces the issue's
anchor figures; raw or standardised pixels give radii in other units). ``digits-pca32`` keeps 32
components; ``digits32px-pca64`` upscales the digits to 32x32 images first (``lightly_tasks.digits``, as the
training benchmark sees them) and keeps 64 of 1,024 components. For k picks, per method:

- ``radius``: coverage radius, the largest distance from any point to its nearest pick;
- ``1-NN acc``: the picks as the labeled set, every point classified by its nearest pick's label;
- ``mean d``: mean distance of a point to its nearest pick (the k-median cost / N).

Methods: ``k-center``, farthest-first from point 0 (:func:`lightly_tasks.selection.kcenter_greedy`, our
engine); ``facility loc.``, greedy facility location with apricot's default similarity for euclidean
embeddings (``max(D^2) - D^2`` over the full N x N matrix: fine for this anchor, not at scale; apricot-select
itself needs numba, which is not installed, and its greedy picks are the same); ``k-means``, scikit-learn
KMeans (k-means++, 4 inits, seed 0), the point nearest each centroid; ``random``, mean over 20 seeds;
``representative``: :func:`lightly_tasks.representative.representative_greedy` (k-center's radius as a
cap, k-median cost minimised by swaps).

Scale (``--scale``): the clustered synthetic embeddings of ``bench/selection.py`` (D = 64, L2-normalised) at
100k and 1M, k = 1000, k-center against representative, each in its own subprocess: wall and CPU seconds
and peak extra memory (``VmHWM`` reset before the call, minus the RSS then), with the radius and mean distance
that each reaches. The machine may be shared: CPU seconds are the steadier figure.

Run: ``python bench/selection_quality.py [--k 25 50 100] [--scale [--sizes 100000 1000000]]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from selection import clustered, rss_kib

from lightly_tasks.representative import representative_greedy
from lightly_tasks.selection import StoppingCondition, kcenter_greedy

# The anchor figures on digits-pca64 at k = 50: (radius, 1-NN accuracy).
ANCHORS = {"k-center": (1.05, 0.84), "facility loc.": (1.16, 0.93), "random": (1.21, 0.83)}
TARGET_RADIUS, TARGET_ACCURACY = 1.10, 0.93
RANDOM_SEEDS = 20


def digits_embeddings(dim: int, side: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(1797, dim) float32 L2-normalised PCA embeddings of the digits (as ``side`` x ``side`` images), labels."""
    from sklearn.datasets import load_digits
    from sklearn.decomposition import PCA

    pixels, labels = load_digits(return_X_y=True)
    if side != 8:
        from lightly_tasks.digits import load_digits as load_digit_images

        images, labels = load_digit_images(side)
        pixels = images[..., 0].reshape(len(images), -1)
    x = PCA(dim, random_state=0).fit_transform(pixels.astype(np.float64))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), labels


def distances(x: np.ndarray, picks: np.ndarray) -> np.ndarray:
    """(N, k) float64 distances from every point to every pick."""
    a, c = x.astype(np.float64), x[picks].astype(np.float64)
    d2 = (a**2).sum(axis=1)[:, None] + (c**2).sum(axis=1)[None, :] - 2 * a @ c.T
    return np.sqrt(np.maximum(d2, 0))


def evaluate(x: np.ndarray, labels: np.ndarray, picks: np.ndarray) -> tuple[float, float, float]:
    """(coverage radius, 1-NN accuracy with the picks as the labeled set, mean distance to the nearest pick)."""
    d = distances(x, picks)
    nearest = d.argmin(axis=1)
    return float(d.min(axis=1).max()), float((labels[picks][nearest] == labels).mean()), float(d.min(1).mean())


def facility_location(x: np.ndarray, k: int) -> np.ndarray:
    """Greedy facility location on ``max(D^2) - D^2`` (apricot's default for euclidean), N x N in memory."""
    d2 = distances(x, np.arange(len(x))) ** 2
    sim = (d2.max() - d2).astype(np.float32)
    best = np.zeros(len(x), np.float32)
    gain, buf = np.empty(len(x), np.float64), np.empty_like(sim)
    picks: list[int] = []
    for _ in range(k):
        np.maximum(sim, best[None, :], out=buf)
        buf.sum(axis=1, dtype=np.float64, out=gain)
        gain[picks] = -np.inf
        picks.append(int(np.argmax(gain)))
        np.maximum(best, sim[picks[-1]], out=best)
    return np.asarray(picks)


def kmeans_nearest(x: np.ndarray, k: int) -> np.ndarray:
    """The distinct points nearest to the k-means centroids (scikit-learn, k-means++, 4 inits, seed 0)."""
    from sklearn.cluster import KMeans

    centroids = KMeans(k, n_init=4, random_state=0).fit(x).cluster_centers_
    d = ((centroids[:, None, :] - x[None, :, :]) ** 2).sum(axis=2)
    picks: list[int] = []
    for row in d:
        picks.append(int(next(i for i in np.argsort(row) if i not in picks)))
    return np.asarray(picks)


def quality(ks: list[int]) -> None:
    """Print the quality table for every data set and k, and the check against the issue's target."""
    sets = {
        "digits-pca64": digits_embeddings(64),
        "digits-pca32": digits_embeddings(32),
        "digits32px-pca64": digits_embeddings(64, side=32),
    }
    methods = {
        "k-center": lambda x, k: kcenter_greedy(x, stop=StoppingCondition(n_samples=k)).indices,
        "facility loc.": facility_location,
        "k-means": kmeans_nearest,
        "representative": lambda x, k: representative_greedy(x, n_samples=k).indices,
    }
    print(f"{'data':<17} {'k':>4} {'method':<15} {'radius':>7} {'1-NN acc':>9} {'mean d':>7} {'seconds':>8}")
    figures: dict[tuple[str, int, str], tuple[float, float, float]] = {}
    for name, (x, labels) in sets.items():
        for k in ks:
            for method, fn in methods.items():
                start = time.perf_counter()
                picks = fn(x, k)
                seconds = time.perf_counter() - start
                assert len(np.unique(picks)) == k, f"{method} picked duplicates"
                figures[name, k, method] = evaluate(x, labels, picks)
                print(f"{name:<17} {k:>4} {method:<15} {_row(figures[name, k, method])} {seconds:8.2f}")
            rng = np.random.default_rng(0)
            runs = [evaluate(x, labels, rng.choice(len(x), k, replace=False)) for _ in range(RANDOM_SEEDS)]
            figures[name, k, "random"] = tuple(np.mean(runs, axis=0))
            spread = np.std(runs, axis=0)
            print(
                f"{name:<17} {k:>4} {'random':<15} {_row(figures[name, k, 'random'])} {'':>8}"
                f"  (std over {RANDOM_SEEDS} seeds: radius {spread[0]:.3f}, acc {spread[1]:.3f})"
            )
    if ("digits-pca64", 50, "k-center") in figures:
        print("issue anchors on digits-pca64, k = 50 (radius / 1-NN acc), issue -> measured here:")
        for method, (radius, acc) in ANCHORS.items():
            r, a, _ = figures["digits-pca64", 50, method]
            print(f"  {method:<14} {radius:.2f} / {acc:.2f} -> {r:.3f} / {a:.3f}")
        r, a, _ = figures["digits-pca64", 50, "representative"]
        met = r <= TARGET_RADIUS and a >= TARGET_ACCURACY
        print(
            f"target radius <= {TARGET_RADIUS} and 1-NN acc >= {TARGET_ACCURACY}: representative {r:.3f} / {a:.3f}"
            f" -> {'met' if met else 'NOT met'}"
        )


def _row(f: tuple[float, float, float]) -> str:
    return f"{f[0]:7.3f} {f[1]:9.3f} {f[2]:7.4f}"


def child(method: str, data: Path, k: int, out: Path) -> None:
    """Run one method on the embeddings in ``data`` and write its figures to ``out`` (JSON)."""
    x = np.load(data)
    before = rss_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    usage = resource.getrusage(resource.RUSAGE_SELF)
    wall = time.perf_counter()
    extra = {}
    if method == "k-center":
        picks = kcenter_greedy(x, stop=StoppingCondition(n_samples=k)).indices
    else:
        result = representative_greedy(x, n_samples=k)
        picks, extra = result.indices, {"rounds": result.rounds, "swaps": result.swaps}
    wall = time.perf_counter() - wall
    after = resource.getrusage(resource.RUSAGE_SELF)
    peak = (rss_kib("VmHWM") - before) / 1024
    cpu = after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime
    radius, mean = _coverage(x, picks)
    out.write_text(json.dumps({"wall": wall, "cpu": cpu, "peak_mib": peak, "radius": radius, "mean": mean} | extra))


def _coverage(x: np.ndarray, picks: np.ndarray, rows: int = 16384) -> tuple[float, float]:
    """(radius, mean distance to the nearest pick) over all of ``x``, in row blocks."""
    c = x[picks].astype(np.float64)
    sq_c = (c**2).sum(axis=1)
    nearest = np.empty(len(x))
    for s in range(0, len(x), rows):
        q = x[s : s + rows].astype(np.float64)
        d2 = (q**2).sum(axis=1)[:, None] + sq_c[None, :] - 2 * q @ c.T
        nearest[s : s + rows] = np.sqrt(np.maximum(d2.min(axis=1), 0))
    return float(nearest.max()), float(nearest.mean())


def scale(sizes: list[int], k: int) -> None:
    """Print time, memory and the reached radius / mean distance of both methods at each size."""
    print(f"scale: clustered synthetic, D = 64, k = {k}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    print(
        f"{'N':>9} {'method':<15} {'wall s':>8} {'cpu s':>8} {'peak MiB':>9} {'radius':>7} {'mean d':>7}"
        f" {'rounds':>6} {'swaps':>6}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            data = Path(tmp) / f"clustered-{n}.npy"
            np.save(data, clustered(n))
            for method in ("k-center", "representative"):
                out = Path(tmp) / f"{n}-{method}.json"
                proc = subprocess.run(
                    [sys.executable, __file__, "--child", method, str(data), str(k), str(out)],
                    capture_output=True,
                    text=True,
                )
                if proc.returncode:
                    print(f"{n:>9} {method:<15} failed:\n{proc.stderr.strip()[-2000:]}")
                    continue
                f = json.loads(out.read_text())
                print(
                    f"{n:>9} {method:<15} {f['wall']:8.1f} {f['cpu']:8.1f} {f['peak_mib']:9.1f} {f['radius']:7.4f}"
                    f" {f['mean']:7.4f} {f.get('rounds', ''):>6} {f.get('swaps', ''):>6}"
                )
            data.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k", type=int, nargs="+", default=[25, 50, 100], help="picks for the quality table")
    parser.add_argument("--scale", action="store_true", help="time and memory at --sizes instead, k = 1000")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--child", nargs=4, metavar=("METHOD", "DATA", "K", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        method, data, k, out = args.child
        child(method, Path(data), int(k), Path(out))
    elif args.scale:
        scale(args.sizes, 1000)
    else:
        quality(args.k)


if __name__ == "__main__":
    main()
