"""Selection with the Lightly Worker's strategies, combined greedily into one objective.

As in the Lightly Worker, THRESHOLD strategies filter the candidates first; every other strategy contributes an
objective ``f_i(x) > 0`` and each step picks the remaining candidate with the largest product
``prod_i f_i(x) ** strength_i`` (computed as ``sum_i strength_i * log f_i(x)``; ties go to the lowest index).
A product makes each objective's scale irrelevant. The objectives:

- DIVERSITY (EMBEDDINGS): the distance to the nearest selected or existing sample (the dataset's samples are the
  initial centres); with ``stopping_condition_minimum_distance`` samples closer than it are dropped, and the
  selection stops when none is left. Before any centre exists it is the same for every candidate.
- WEIGHTS (SCORES, METADATA, RANDOM): the input value itself (shifted so the smallest is 0 when any is
  negative; a missing value counts as 0); ``stopping_condition_max_sum`` stops once the picks' inputs sum to it.
- SIMILARITY (EMBEDDINGS + a query set): ``1 / distance`` to the nearest query sample.
- TYPICALITY (EMBEDDINGS): ``1 / mean distance`` to the ``num_nearest_neighbors`` (20) nearest candidates
  (TypiClust's typicality, scaled to (0, 1]); above 20,000 candidates the neighbours are taken from an evenly
  strided 20,000-sample reference set. ``stopping_condition_minimum_typicality`` stops before a pick below it.
- BALANCE (PREDICTIONS class distribution, or categorical METADATA): ``target_c / share_c`` after adding the
  sample, averaged over its objects (a greedy D'Hondt apportionment, so alone it meets the target to within
  one sample per class); categories without a target share ``1 - sum(target)``. Samples without a label are
  neutral.

Logs are floored (1e-9 for distances, 1e-6 of the largest weight, 1e-6 for a zero target) so no objective is
infinite. Cost per pick: the combination is O(N) per strategy; DIVERSITY keeps each candidate's distance to
its nearest centre with :mod:`lightly_tasks.selection`'s cluster pruning, O(N * D) per pick at worst and
usually a fraction of it, never an N x N matrix. TYPICALITY's neighbours cost O(N * min(N, 20,000) * D) once.
With DIVERSITY (strength > 0) as the only objective besides thresholds, or with thresholds alone, the exact
farthest-first :func:`~lightly_tasks.selection.kcenter_greedy` runs on what the thresholds leave. DIVERSITY and
TYPICALITY on the embeddings with equal strengths and no stopping condition of their own (the mix "diverse but
typical") run :func:`~lightly_tasks.representative.representative_greedy` instead: the most representative
picks whose coverage radius is no worse than farthest-first's (no per-pick distances then).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np
import pandas as pd

from lightly_tasks.active_learning_scores import class_labels, compute_scores
from lightly_tasks.config import SelectionInputConfig, SelectionStrategyEntry
from lightly_tasks.selection import Clusters, Selection, StoppingCondition, as_matrix, kcenter_greedy

TYPICALITY_NEIGHBOURS = 20
TYPICALITY_REFERENCE = 20_000
_DISTANCE_FLOOR = 1e-9
_WEIGHT_FLOOR = 1e-6
_TARGET_FLOOR = 1e-6
_CHUNK = 65_536
_OTHER = "(other)"


@dataclass
class SelectionInputs:
    """What the strategies may read, for N candidates in a fixed order.

    ``metadata``: one row per candidate (same order), columns named as the metadata pass names them
    (``sharpness``; a strategy's ``lightly.sharpness`` reads it). ``predictions``: task name -> (schema,
    {key: predictions}) in the Lightly format. ``query``: resolves a SIMILARITY input (tag or file names) to
    the (Q, D) embeddings of its query set.
    """

    keys: Sequence[str]
    embeddings: np.ndarray
    existing: np.ndarray | None = None
    metadata: pd.DataFrame | None = None
    predictions: Mapping[str, tuple[Any, Mapping[str, Any]]] = field(default_factory=dict)
    query: Callable[[SelectionInputConfig], np.ndarray] | None = None


@dataclass(frozen=True)
class StrategySelection:
    """Picks in order: ``indices`` (k,) into the candidates, ``distances`` (k,) to the nearest centre when
    picked (NaN when no strategy tracks distances, inf for a first pick without centres), ``scores`` (k,) the
    combined log-objective that chose each; ``excluded_by`` (N,) the first THRESHOLD strategy (index into the
    strategies) that excluded each candidate, -1 if none; ``summary`` one dict per strategy for the report."""

    indices: np.ndarray
    distances: np.ndarray
    scores: np.ndarray
    stopped_by: str
    excluded_by: np.ndarray
    summary: list[dict[str, Any]]


def describe(entry: SelectionStrategyEntry) -> dict[str, Any]:
    """The entry as the user wrote it, without the keys left empty."""
    return {
        part: {k: v for k, v in vars(getattr(entry, part)).items() if v is not None}
        for part in ("input", "strategy")
    }


def select_with_strategies(
    entries: Sequence[SelectionStrategyEntry], data: SelectionInputs, stop: StoppingCondition
) -> StrategySelection:
    """Run the combined greedy selection of ``entries`` over ``data`` until ``stop`` (or a strategy's own
    stopping condition) ends it. Raises ValueError naming the strategy when its input cannot be read."""
    n = len(data.keys)
    limits = stop.count_limits(n)
    summary = [
        {**describe(e), "type": e.strategy.type, "inputType": e.input.type, "strength": e.strategy.strength}
        for e in entries
    ]
    excluded_by = np.full(n, -1, np.int64)
    eligible = np.ones(n, bool)
    raw: dict[int, np.ndarray] = {}
    for i, entry in enumerate(entries):
        if entry.strategy.type != "THRESHOLD":
            continue
        values = _scalar_input(i, entry.input, data)
        keep = _compare(values, entry.strategy.operation, float(entry.strategy.threshold))
        excluded_by[eligible & ~keep] = i
        eligible &= keep
        summary[i]["nExcluded"] = int((~keep).sum())
        summary[i]["nMissing"] = int(np.isnan(values).sum())
        raw[i] = values
    objectives = [i for i, e in enumerate(entries) if e.strategy.type != "THRESHOLD"]
    min_distance = _min_distance(entries, stop)
    only = [entries[i] for i in objectives]
    if n and _representative_mix(only, min_distance):
        sel = _representative(data, eligible, stop)
        for i in objectives:
            summary[i]["contribution"] = 0.5
            summary[i]["algorithm"] = "coverage-capped representative (lightly_tasks.representative)"
        return StrategySelection(
            sel.indices, sel.distances, np.full(len(sel.indices), np.nan), sel.stopped_by, excluded_by, summary
        )
    plain_diversity = len(only) == 1 and only[0].strategy.type == "DIVERSITY" and only[0].strategy.strength > 0
    if n and (plain_diversity or not only):  # only thresholds: the default farthest-first among what is left
        sel = _farthest_first(data, eligible, stop, min_distance)
        if only:
            summary[objectives[0]]["contribution"] = 1.0
        return StrategySelection(
            sel.indices, sel.distances, np.log(np.maximum(sel.distances, _DISTANCE_FLOOR)), sel.stopped_by,
            excluded_by, summary,
        )
    return _Greedy(entries, data, eligible, limits, min_distance, summary, raw).run(excluded_by)


def _min_distance(entries: Sequence[SelectionStrategyEntry], stop: StoppingCondition) -> float | None:
    values = [e.strategy.stopping_condition_minimum_distance for e in entries]
    values = [v for v in [*values, stop.min_distance] if v is not None]
    return max(values) if values else None


def _representative_mix(only: Sequence[SelectionStrategyEntry], min_distance: float | None) -> bool:
    """DIVERSITY + TYPICALITY on the embeddings, equal strengths, no stopping condition of their own."""
    kinds = sorted(e.strategy.type for e in only)
    return (
        kinds == ["DIVERSITY", "TYPICALITY"]
        and all(e.input == SelectionInputConfig(type="EMBEDDINGS") for e in only)
        and only[0].strategy.strength == only[1].strategy.strength > 0
        and all(e.strategy.num_nearest_neighbors is None for e in only)
        and all(e.strategy.stopping_condition_minimum_typicality is None for e in only)
        and min_distance is None
    )


def _representative(data: SelectionInputs, eligible: np.ndarray, stop: StoppingCondition) -> Selection:
    """The coverage-capped representative selection on the eligible candidates (distances not tracked: NaN)."""
    from lightly_tasks.representative import representative_greedy

    rows = np.flatnonzero(eligible)
    x = data.embeddings if len(rows) == len(eligible) else data.embeddings[rows]
    limits = {name: limit for limit, name in stop.count_limits(len(eligible))}
    name = min(limits, key=lambda k: (limits[k], k != "n_samples"))
    existing = data.existing if data.existing is not None and len(data.existing) else None
    rep = representative_greedy(x, n_samples=limits[name], existing=existing)
    stopped_by = name if limits[name] < len(rows) else "exhausted"
    return Selection(rows[rep.indices], np.full(len(rep.indices), np.nan, np.float32), stopped_by)


def _farthest_first(
    data: SelectionInputs, eligible: np.ndarray, stop: StoppingCondition, min_distance: float | None
) -> Selection:
    """k-center greedy on the eligible candidates, indices mapped back to all candidates."""
    rows = np.flatnonzero(eligible)
    x = data.embeddings if len(rows) == len(eligible) else data.embeddings[rows]
    limits = {name: limit for limit, name in stop.count_limits(len(eligible))}
    sub_stop = StoppingCondition(
        n_samples=min(limits.values()) if limits else None, min_distance=min_distance
    )
    existing = data.existing if data.existing is not None and len(data.existing) else None
    sel = kcenter_greedy(x, existing=existing, stop=sub_stop)
    stopped_by = sel.stopped_by
    if stopped_by == "n_samples":  # name the count condition that set the limit
        stopped_by = min(limits, key=lambda k: (limits[k], k != "n_samples"))
    return Selection(rows[sel.indices], sel.distances, stopped_by)


def _compare(values: np.ndarray, operation: str, threshold: float) -> np.ndarray:
    """Which values pass ``<operation> threshold``; NaN (a missing value) never does."""
    with np.errstate(invalid="ignore"):
        return {
            "SMALLER": values < threshold,
            "SMALLER_EQUAL": values <= threshold,
            "BIGGER": values > threshold,
            "BIGGER_EQUAL": values >= threshold,
        }[operation]


def _where(i: int) -> str:
    return f"selection_config.strategies[{i}].input"


def _task(i: int, inp: SelectionInputConfig, data: SelectionInputs) -> tuple[Any, Mapping[str, Any]]:
    if inp.task not in data.predictions:
        found = ", ".join(sorted(data.predictions)) or "none"
        raise ValueError(f"{_where(i)}.task: no predictions of task {inp.task!r} for this run (found: {found})")
    return data.predictions[inp.task]


def _metadata_column(i: int, inp: SelectionInputConfig, data: SelectionInputs) -> pd.Series:
    column = inp.key.removeprefix("lightly.")
    if data.metadata is None or column not in data.metadata.columns:
        have = [] if data.metadata is None else sorted(data.metadata.columns)
        raise ValueError(
            f"{_where(i)}.key: no metadata {inp.key!r} (recorded: {', '.join('lightly.' + c for c in have)})"
        )
    return data.metadata[column]


def _scalar_input(i: int, inp: SelectionInputConfig, data: SelectionInputs) -> np.ndarray:
    """(N,) float64 values of a SCORES, METADATA or RANDOM input; NaN where a sample has none."""
    n = len(data.keys)
    if inp.type == "SCORES":
        schema, predictions = _task(i, inp, data)
        return compute_scores(data.keys, predictions, inp.score, schema=schema, categories=inp.categories)
    if inp.type == "METADATA":
        column = _metadata_column(i, inp, data)
        values = pd.to_numeric(column, errors="coerce").to_numpy(np.float64)
        if np.isnan(values).all() and column.notna().any():
            raise ValueError(f"{_where(i)}.key: {inp.key!r} is not numeric; use it with BALANCE")
        return values
    if inp.type == "RANDOM":
        return 1.0 - np.random.default_rng(inp.random_seed or 0).random(n)  # in (0, 1]
    raise ValueError(f"{_where(i)}.type: {inp.type} has no scalar value")  # pragma: no cover - config checks it


def _labels(i: int, inp: SelectionInputConfig, data: SelectionInputs) -> list[list[str]]:
    """Per candidate, the class names a BALANCE counts (PREDICTIONS objects or a categorical metadata value)."""
    if inp.type == "PREDICTIONS":
        schema, predictions = _task(i, inp, data)
        return class_labels(data.keys, predictions, schema=schema, categories=inp.categories)
    column = _metadata_column(i, inp, data)
    return [[] if pd.isna(v) else [_label(v)] for v in column]


def _label(value: Any) -> str:
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _nearest_distances(x: np.ndarray, reference: np.ndarray, k: int) -> np.ndarray:
    """(N, k) sorted Euclidean distances from each row of ``x`` to its ``k`` nearest rows of ``reference``."""
    out = np.empty((len(x), k), np.float32)
    for s in range(0, len(x), _CHUNK):
        d2 = faiss.knn(x[s : s + _CHUNK], reference, k)[0]
        out[s : s + len(d2)] = np.sqrt(np.maximum(d2, 0))
    return out


def typicality(x: np.ndarray, k: int = TYPICALITY_NEIGHBOURS) -> np.ndarray:
    """(N,) typicality in (0, 1]: ``1 / mean distance to the k nearest other candidates``, over its maximum."""
    n = len(x)
    k = max(1, min(k, n - 1))
    if n < 2:
        return np.ones(n)
    step = max(1, math.ceil(n / TYPICALITY_REFERENCE))
    reference = x[::step]
    near = _nearest_distances(x, reference, min(k + 1, len(reference)))
    in_reference = np.zeros(n, bool)
    in_reference[::step] = True
    # a reference row finds itself first (distance 0): drop that column for it, the last one for the others
    own = np.where(in_reference[:, None], near[:, 1:], near[:, :-1]) if near.shape[1] > k else near
    mean = own[:, :k].mean(axis=1).astype(np.float64)
    typ = 1.0 / np.maximum(mean, _DISTANCE_FLOOR)
    return typ / typ.max()


class _Balance:
    """The BALANCE objective's state: selected objects per class, and each candidate's objects per class."""

    def __init__(self, labels: list[list[str]], strategy: Any, eligible: np.ndarray) -> None:
        names = sorted({name for sample in labels for name in sample})
        distribution = strategy.distribution or "TARGET"
        if distribution == "UNIFORM":
            target = {name: 1.0 / len(names) for name in names} if names else {}
        elif distribution == "INPUT":
            counts: dict[str, int] = {}
            for sample, ok in zip(labels, eligible, strict=True):
                for name in sample if ok else []:
                    counts[name] = counts.get(name, 0) + 1
            total = sum(counts.values())
            target = {name: c / total for name, c in counts.items()}
        else:
            target = dict(strategy.target)
        self.target = target
        self.classes = [*target, _OTHER]
        index = {name: j for j, name in enumerate(target)}
        other = len(target)
        shares = np.array([*target.values(), max(0.0, 1.0 - sum(target.values()))])
        self.log_target = np.log(np.maximum(shares, _TARGET_FLOOR))
        rows, cls, cnt = [], [], []
        for r, sample in enumerate(labels):
            per: dict[int, int] = {}
            for name in sample:
                j = index.get(name, other)
                per[j] = per.get(j, 0) + 1
            for j, c in per.items():
                rows.append(r)
                cls.append(j)
                cnt.append(c)
        self.rows = np.asarray(rows, np.int64)
        self.cls = np.asarray(cls, np.int64)
        self.cnt = np.asarray(cnt, np.float64)
        self.n_objects = np.bincount(self.rows, weights=self.cnt, minlength=len(labels))
        self.selected = np.zeros(len(self.classes))
        self.n = len(labels)

    def values(self) -> np.ndarray:
        """Per candidate: mean over its objects of ``log(target_c / share_c after adding it)``; 0 without any."""
        total = self.selected.sum() + self.n_objects[self.rows]
        share = (self.selected[self.cls] + self.cnt) / total
        per_entry = self.cnt * (self.log_target[self.cls] - np.log(share))
        return np.bincount(self.rows, weights=per_entry, minlength=self.n) / np.maximum(self.n_objects, 1)

    def add(self, pick: int) -> None:
        at = self.rows == pick
        np.add.at(self.selected, self.cls[at], self.cnt[at])

    def shares(self) -> dict[str, float]:
        total = self.selected.sum()
        pairs = zip(self.classes, self.selected, strict=True)
        return {c: round(float(v / total), 4) if total else 0.0 for c, v in pairs}


class _Greedy:
    """The combined greedy loop over all non-THRESHOLD strategies."""

    def __init__(
        self,
        entries: Sequence[SelectionStrategyEntry],
        data: SelectionInputs,
        eligible: np.ndarray,
        limits: list[tuple[int, str]],
        min_distance: float | None,
        summary: list[dict[str, Any]],
        raw: dict[int, np.ndarray],
    ) -> None:
        self.entries, self.data, self.eligible, self.limits = entries, data, eligible, limits
        self.min_distance, self.summary, self.raw = min_distance, summary, raw
        n = len(data.keys)
        self.static: dict[int, np.ndarray] = {}
        self.balances: dict[int, _Balance] = {}
        self.diversity: list[int] = []
        self.max_sums: list[tuple[int, float]] = []
        self.min_typicality: list[tuple[int, float, np.ndarray]] = []
        x = as_matrix(data.embeddings, "embeddings") if n else np.zeros((0, 1), np.float32)
        self.x = x
        for i, entry in enumerate(entries):
            s, kind = entry.strategy.strength, entry.strategy.type
            if kind == "THRESHOLD":
                continue
            if kind == "DIVERSITY":
                self.diversity.append(i)
            elif kind == "BALANCE":
                self.balances[i] = _Balance(_labels(i, entry.input, data), entry.strategy, eligible)
            elif kind == "WEIGHTS":
                values = _scalar_input(i, entry.input, data)
                self.raw[i] = values
                self.static[i] = s * _log_weights(values)
                if entry.strategy.stopping_condition_max_sum is not None:
                    self.max_sums.append((i, entry.strategy.stopping_condition_max_sum))
            elif kind == "SIMILARITY":
                query = _query(i, entry.input, data, x.shape[1])
                dist = _nearest_distances(x, query, 1)[:, 0]
                self.raw[i] = dist.astype(np.float64)
                self.static[i] = -s * np.log(np.maximum(dist, _DISTANCE_FLOOR))
            elif kind == "TYPICALITY":
                typ = typicality(x, entry.strategy.num_nearest_neighbors or TYPICALITY_NEIGHBOURS)
                self.raw[i] = typ
                self.static[i] = s * np.log(typ)
                if entry.strategy.stopping_condition_minimum_typicality is not None:
                    self.min_typicality.append((i, entry.strategy.stopping_condition_minimum_typicality, typ))
        self.static_sum = sum(self.static.values(), np.zeros(n))
        self.tracks_distance = bool(self.diversity) or min_distance is not None
        self.clusters: Clusters | None = None
        if self.tracks_distance and n:
            self.clusters = Clusters(x, _CHUNK)
            if data.existing is not None and len(data.existing):
                existing = as_matrix(data.existing, "existing")
                if existing.shape[1] != x.shape[1]:
                    raise ValueError(f"existing has dimension {existing.shape[1]}, candidates {x.shape[1]}")
                self.clusters.seed(existing)

    def _diversity_log(self, out: np.ndarray) -> np.ndarray:
        """log(distance to the nearest centre) of every candidate into ``out`` (float64); 0 before any centre."""
        mind2 = self.clusters.mind2
        if not np.isfinite(mind2).any():  # no centre yet: every candidate is equally far
            out[:] = 0.0
            return out
        np.maximum(mind2, _DISTANCE_FLOOR**2, out=out)
        np.log(out, out=out)
        out *= 0.5
        return out

    def run(self, excluded_by: np.ndarray) -> StrategySelection:
        n = len(self.data.keys)
        available = self.eligible.copy()
        weight = available.astype(np.float64)  # 1.0 where available, for means by dot products
        penalty = np.where(available, 0.0, -np.inf)
        total = np.empty(n)
        log_d = np.empty(n)
        scratch = np.empty(n)
        picks: list[int] = []
        dists: list[float] = []
        scores: list[float] = []
        advantage = {i: 0.0 for i in range(len(self.entries)) if self.entries[i].strategy.type != "THRESHOLD"}
        sums = {i: 0.0 for i, _ in self.max_sums}
        dropped_close = False
        stopped_by = "exhausted"
        while True:
            reached = [name for limit, name in self.limits if len(picks) >= limit]
            if reached:
                stopped_by = reached[0]
                break
            if self.min_distance is not None and self.clusters is not None:
                close = available & (self.clusters.mind2 < np.float32(self.min_distance) ** 2)
                if close.any():
                    dropped_close = True
                    available &= ~close
                    weight[close], penalty[close] = 0.0, -np.inf
            n_avail = int(available.sum())
            if not n_avail:
                stopped_by = "min_distance" if dropped_close else "exhausted"
                break
            # (strength, base objective) per strategy; static ones are already scaled by their strength
            terms = {i: (1.0, values) for i, values in self.static.items()}
            if self.diversity:
                self._diversity_log(log_d)
                for i in self.diversity:
                    terms[i] = (self.entries[i].strategy.strength, log_d)
            for i, balance in self.balances.items():
                terms[i] = (self.entries[i].strategy.strength, balance.values())
            np.add(self.static_sum, penalty, out=total)
            for i, (strength, values) in terms.items():
                if i not in self.static and strength:
                    total += strength * values
            pick = int(np.argmax(total))
            below = [i for i, limit, typ in self.min_typicality if typ[pick] < limit]
            if below:
                stopped_by = "minimum_typicality"
                break
            for i, (strength, values) in terms.items():  # multiply-and-sum, not np.dot: BLAS threads cost more
                mean = float(np.multiply(values, weight, out=scratch).sum()) / n_avail
                advantage[i] += abs(strength * (float(values[pick]) - mean))
            distance = math.nan
            if self.clusters is not None:
                distance = float(np.sqrt(self.clusters.mind2[pick]))
                home = int(self.clusters.owner[pick]) if self.clusters.size else -1
                self.clusters.add_centre(pick, home)
            picks.append(pick)
            dists.append(distance)
            scores.append(float(total[pick]))
            available[pick], weight[pick], penalty[pick] = False, 0.0, -np.inf
            for balance in self.balances.values():
                balance.add(pick)
            hit = False
            for i, limit in self.max_sums:
                value = self.raw[i][pick]
                sums[i] += 0.0 if np.isnan(value) else float(value)
                hit |= sums[i] >= limit
            if hit:
                stopped_by = "max_sum"
                break
        self._summarise(picks, advantage)
        return StrategySelection(
            np.asarray(picks, np.int64),
            np.asarray(dists, np.float32),
            np.asarray(scores, np.float64),
            stopped_by if n else "exhausted",
            excluded_by,
            self.summary,
        )

    def _summarise(self, picks: list[int], advantage: dict[int, float]) -> None:
        total = sum(advantage.values())
        for i, adv in advantage.items():
            self.summary[i]["contribution"] = round(float(adv / total), 4) if total > 0 else 0.0
        for i, values in self.raw.items():
            if len(values) == 0:
                continue
            chosen = values[picks] if picks else np.empty(0)
            self.summary[i]["inputMeanCandidates"] = _mean(values)
            self.summary[i]["inputMeanSelected"] = _mean(chosen)
        for i, balance in self.balances.items():
            self.summary[i]["target"] = {c: round(t, 4) for c, t in balance.target.items()}
            self.summary[i]["selectedShares"] = balance.shares()


def _mean(values: np.ndarray) -> float | None:
    finite = values[np.isfinite(values)]
    return round(float(finite.mean()), 6) if len(finite) else None


def _log_weights(values: np.ndarray) -> np.ndarray:
    """log of the WEIGHTS objective: the values (shifted to >= 0 if any is negative; missing = 0), floored."""
    v = values
    finite = v[np.isfinite(v)]
    if not len(finite):
        return np.zeros(len(v))
    low = min(0.0, float(finite.min()))
    v = np.where(np.isfinite(v), v - low, 0.0)
    top = float(v.max())
    if top <= 0:
        return np.zeros(len(v))
    return np.log(np.maximum(v, _WEIGHT_FLOOR * top))


def _query(i: int, inp: SelectionInputConfig, data: SelectionInputs, dim: int) -> np.ndarray:
    if data.query is None:
        raise ValueError(f"{_where(i)}: this run cannot resolve SIMILARITY query sets")
    query = data.query(inp)
    if query is None or not len(query):
        what = f"tag {inp.tag_name!r}" if inp.tag_name else f"file_names {list(inp.file_names or [])[:5]}"
        raise ValueError(f"{_where(i)}: the query set ({what}) holds no samples with an embedding")
    query = as_matrix(query, "query")
    if query.shape[1] != dim:
        raise ValueError(f"{_where(i)}: query embeddings have dimension {query.shape[1]}, candidates {dim}")
    return query
