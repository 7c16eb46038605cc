"""Benchmark: the combined strategy selection (:mod:`lightly_tasks.strategies`) at scale, no N x N matrix.

For each N it selects k samples with farthest-first alone (the fast path), then with mixes that force the
combined greedy loop: DIVERSITY + RANDOM WEIGHTS, DIVERSITY + BALANCE over 10 classes, and DIVERSITY +
TYPICALITY at unequal strengths (its neighbours from a 20,000-sample reference set; equal strengths would run
lightly_tasks.representative instead, benchmarked by its own script). Data: ``bench/selection.py``'s clustered
stand-in for image embeddings (D = 64, L2-normalised). Prints wall and CPU seconds of each selection, the
seconds per pick, and the peak extra memory (``VmHWM`` after reset minus the RSS before, candidates loaded).

Run: ``python bench/strategies.py [--sizes 100000 1000000] [--k 200]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from selection import clustered, rss_kib

from lightly_tasks.config import parse_config
from lightly_tasks.selection import StoppingCondition
from lightly_tasks.strategies import SelectionInputs, select_with_strategies

DIVERSITY = {"input": {"type": "EMBEDDINGS"}, "strategy": {"type": "DIVERSITY"}}
MIXES = {
    "DIVERSITY (fast path)": [DIVERSITY],
    "DIVERSITY + RANDOM WEIGHTS": [DIVERSITY, {"input": {"type": "RANDOM"},
                                               "strategy": {"type": "WEIGHTS", "strength": 0.2}}],
    "DIVERSITY + BALANCE (10 classes)": [
        DIVERSITY,
        {"input": {"type": "PREDICTIONS", "task": "t", "name": "CLASS_DISTRIBUTION"},
         "strategy": {"type": "BALANCE", "distribution": "UNIFORM"}},
    ],
    "DIVERSITY + TYPICALITY (0.5)": [
        DIVERSITY, {"input": {"type": "EMBEDDINGS"}, "strategy": {"type": "TYPICALITY", "strength": 0.5}}
    ],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--k", type=int, default=200)
    args = parser.parse_args()
    print(f"{'N':>9} {'mix':<34} {'wall s':>8} {'cpu s':>8} {'ms/pick':>8} {'extra MiB':>10}")
    for n in args.sizes:
        x = clustered(n)
        keys = [f"{i:08d}.png" for i in range(n)]
        labels = np.random.default_rng(1).choice(10, n, p=np.r_[0.55, np.full(9, 0.05)])
        schema = {"task_type": "classification", "categories": [{"id": i, "name": f"c{i}"} for i in range(10)]}
        preds = {k: [{"category_id": int(c)}] for k, c in zip(keys, labels, strict=True)}
        data = SelectionInputs(keys, x, metadata=pd.DataFrame(index=range(n)), predictions={"t": (schema, preds)})
        for name, entries in MIXES.items():
            conf = {"datasource": {"uri": "file:///x"}, "dataset": "d", "selection_config": {"strategies": entries}}
            strategies = parse_config(conf).selection_config.strategies
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM
            before = rss_kib("VmRSS")
            wall, cpu = time.perf_counter(), time.process_time()
            sel = select_with_strategies(strategies, data, StoppingCondition(n_samples=args.k))
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            extra = (rss_kib("VmHWM") - before) / 1024
            assert len(sel.indices) == args.k
            print(f"{n:>9} {name:<34} {wall:>8.1f} {cpu:>8.1f} {1000 * wall / args.k:>8.1f} {extra:>10.0f}", flush=True)


if __name__ == "__main__":
    main()
