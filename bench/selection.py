"""Benchmark: k-center greedy selection, ours against a naive numpy traversal and Lightly's open engine.

Methods, each picking k of N candidates by farthest-first traversal from candidate 0:

1. ``ours``: :func:`lightly_tasks.selection.kcenter_greedy`;
2. ``naive``: numpy brute force, one ``N x D`` matrix-vector product and a running minimum per pick;
3. ``lightly``: ``lightly_mundig``, the compiled selection engine that ``lightly-studio`` ships (also on PyPI
   as ``lightly-mundig``): ``Selection().add_diversifying_strategy(embeddings=x, strength=1.0)`` then
   ``run_selection(preselected_indices=[], n_total_samples=N, n_samples_to_select=k)``; it starts from
   index 0 as well. ``make bench`` installs it from ``requirements-bench.txt``; this script installs
   nothing and skips it, saying so, when it is missing.

Data (D = 64, L2-normalised): ``clustered``, a realistic stand-in for image embeddings (1000 Gaussian clusters
of Dirichlet-distributed sizes, each spread over its own random rank-6 subspace, cluster centres drawn with a
power-law spectrum (variance of axis i ~ i^-1.5) around a common mean direction), at 100k and 1M; and
``isotropic`` Gaussian at 100k, the worst case for any pruning (no low-dimensional structure to exploit).

Every (data, method) runs in its own subprocess on the same ``.npy`` file, so timings and memory are
isolated: seconds are wall and CPU (all threads) of the selection call; peak extra memory is the peak RSS
during the call (``VmHWM``, reset just before it) minus the RSS then, with the candidates already loaded.
Agreement columns: the share of Lightly's (or naive's) picks that a method also picks, and the first
position where the two sequences differ ("-": identical). Lightly's engine is not exact: at near-ties (a
relative gap up to ~6e-5 between the two farthest candidates) it can take the second, after which the
sequences part; ours follows brute force. The machine may be shared: CPU seconds are the steadier figure.

Run: ``python bench/selection.py [--k 1000] [--sizes 100000 1000000] [--isotropic 100000]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

METHODS = ("ours", "naive", "lightly")


def clustered(n: int, d: int = 64, n_clusters: int = 1000, rank: int = 6, seed: int = 0) -> np.ndarray:
    """(n, d) float32 unit vectors: a mixture of low-rank Gaussian clusters with a power-law spectrum."""
    rng = np.random.default_rng(seed)
    spectrum = np.arange(1, d + 1, dtype=np.float32) ** -0.75
    centres = rng.standard_normal((n_clusters, d), dtype=np.float32)
    sizes = rng.multinomial(n, rng.dirichlet(np.ones(n_clusters)))
    y = np.empty((n, d), np.float32)
    start = 0
    for c, size in enumerate(sizes):
        basis = rng.standard_normal((rank, d), dtype=np.float32) * (0.5 / np.sqrt(rank))
        y[start : start + size] = centres[c] + rng.standard_normal((size, rank), dtype=np.float32) @ basis
        start += size
    y *= spectrum
    y += 0.006 * rng.standard_normal((n, d), dtype=np.float32)
    rotation = np.linalg.qr(rng.standard_normal((d, d)))[0].astype(np.float32)
    x = y @ rotation
    x += np.linalg.norm(x, axis=1).mean() * rotation[0]
    x = x[rng.permutation(n)]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def isotropic(n: int, d: int = 64, seed: int = 0) -> np.ndarray:
    """(n, d) float32 unit vectors drawn uniformly on the sphere."""
    x = np.random.default_rng(seed).standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def effective_dim(x: np.ndarray) -> float:
    """Participation ratio of the covariance spectrum, (sum l)^2 / sum l^2, on a strided sample."""
    sample = x[:: max(1, len(x) // 20000)].astype(np.float64)
    sample -= sample.mean(axis=0)
    eig = np.linalg.eigvalsh(sample.T @ sample)
    return float(eig.sum() ** 2 / (eig**2).sum())


def naive(x: np.ndarray, k: int) -> np.ndarray:
    """Brute-force farthest-first from index 0: (k,) picks, squared distances by ``|x|^2 - 2xc + |c|^2``."""
    sq = np.einsum("ij,ij->i", x, x)
    mind2 = np.full(len(x), np.inf, np.float32)
    picks = [0]
    for _ in range(min(k, len(x)) - 1):
        c = x[picks[-1]]
        d2 = x @ c
        d2 *= -2
        d2 += sq
        d2 += c @ c
        np.minimum(mind2, d2, out=mind2)
        mind2[picks[-1]] = -np.inf
        picks.append(int(np.argmax(mind2)))
    return np.asarray(picks)


def lightly(x: np.ndarray, k: int) -> np.ndarray:
    """Lightly's engine, setup included (it copies the embeddings in): (k,) picks."""
    import lightly_mundig

    engine = lightly_mundig.Selection()
    engine.add_diversifying_strategy(embeddings=x, strength=1.0)
    return np.asarray(
        engine.run_selection(preselected_indices=[], n_total_samples=len(x), n_samples_to_select=k)
    )


def ours(x: np.ndarray, k: int) -> np.ndarray:
    """:func:`lightly_tasks.selection.kcenter_greedy`: (k,) picks."""
    from lightly_tasks.selection import StoppingCondition, kcenter_greedy

    return kcenter_greedy(x, stop=StoppingCondition(n_samples=k)).indices


def rss_kib(field: str) -> int:
    """``VmRSS`` (current) or ``VmHWM`` (peak since the last reset) of this process, KiB."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def child(method: str, data: Path, k: int, out: Path) -> None:
    """Run one method on the candidates in ``data``; write picks and figures next to ``out``."""
    fn = {"ours": ours, "naive": naive, "lightly": lightly}[method]
    x = np.load(data)
    if method == "lightly":
        import lightly_mundig  # noqa: F401  (imported before the baseline, like the other methods' modules)
    else:
        import lightly_tasks.selection  # noqa: F401
    before = rss_kib("VmRSS")
    # Reset the peak RSS (VmHWM) to the current RSS; ru_maxrss cannot be reset and after fork/exec it
    # still holds the parent's peak.
    Path("/proc/self/clear_refs").write_text("5")
    usage = resource.getrusage(resource.RUSAGE_SELF)
    wall = time.perf_counter()
    picks = fn(x, k)
    wall = time.perf_counter() - wall
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime
    np.save(out.with_suffix(".npy"), picks)
    figures = {"wall": wall, "cpu": cpu, "peak_mib": (rss_kib("VmHWM") - before) / 1024}
    out.write_text(json.dumps(figures))


def run(method: str, data: Path, k: int, workdir: Path) -> dict | None:
    """Figures and picks of ``method`` on ``data`` from a fresh subprocess, or None if it failed."""
    out = workdir / f"{data.stem}-{method}.json"
    proc = subprocess.run(
        [sys.executable, __file__, "--child", method, str(data), str(k), str(out)],
        capture_output=True,
        text=True,
    )
    if proc.returncode:
        print(f"  {method} failed:\n{proc.stderr.strip()[-2000:]}")
        return None
    figures = json.loads(out.read_text())
    figures["picks"] = np.load(out.with_suffix(".npy"))
    return figures


def agreement(picks: np.ndarray, reference: np.ndarray | None) -> str:
    """Share of ``reference``'s picks also in ``picks``, and the first position where the sequences differ
    ("-" when identical); blank without a reference."""
    if reference is None:
        return f"{'':>7} {'':>6}"
    shared = len(np.intersect1d(picks, reference)) / len(reference)
    differ = np.flatnonzero(picks[: len(reference)] != reference[: len(picks)])
    first = str(differ[0]) if len(differ) else ("-" if len(picks) == len(reference) else str(len(picks)))
    return f"{shared:7.1%} {first:>6}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--isotropic", type=int, default=100_000, help="N of the isotropic case, 0 to skip")
    parser.add_argument("--child", nargs=4, metavar=("METHOD", "DATA", "K", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        method, data, k, out = args.child
        child(method, Path(data), int(k), Path(out))
        return

    methods = list(METHODS)
    if importlib.util.find_spec("lightly_mundig") is None:
        print("lightly_mundig is not installed (make bench installs requirements-bench.txt): skipping it")
        methods.remove("lightly")
    cases = [("clustered", n, clustered) for n in args.sizes]
    if args.isotropic:
        cases.append(("isotropic", args.isotropic, isotropic))
    print(f"k = {args.k}, D = 64, {os.cpu_count()} CPUs, load average at start {os.getloadavg()[0]:.1f}")
    print(
        f"{'data':<10} {'N':>9} {'method':<8} {'wall s':>8} {'cpu s':>8} {'peak MiB':>9}"
        f" | {'=lightly':>7} {'diff@':>6} | {'=naive':>7} {'diff@':>6}"
    )
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for name, n, make in cases:
            x = make(n)
            data = workdir / f"{name}-{n}.npy"
            np.save(data, x)
            print(f"{name} N={n}: {x.nbytes / 2**20:.0f} MiB, effective dimension {effective_dim(x):.1f}")
            del x
            results = {method: run(method, data, args.k, workdir) for method in methods}
            lightly_picks = results["lightly"]["picks"] if results.get("lightly") else None
            naive_picks = results["naive"]["picks"] if results.get("naive") else None
            for method, r in results.items():
                if r is not None:
                    print(
                        f"{name:<10} {n:>9} {method:<8} {r['wall']:8.2f} {r['cpu']:8.2f} {r['peak_mib']:9.1f}"
                        f" | {agreement(r['picks'], lightly_picks)} | {agreement(r['picks'], naive_picks)}"
                    )
            for other in ("lightly", "naive"):
                if results.get("ours") and results.get(other):
                    ratios.append((name, n, other, results[other], results["ours"]))
            data.unlink()
    print("speed-up of ours (other / ours):")
    for name, n, other, r, mine in ratios:
        print(
            f"  {name} N={n}: {other} / ours = {r['wall'] / mine['wall']:.1f}x wall, "
            f"{r['cpu'] / mine['cpu']:.1f}x cpu"
        )


if __name__ == "__main__":
    main()
