"""The Lightly Worker's selection strategies on constructed sets: each one's effect, their trade-off by strength,
their stopping conditions, the active-learning scores, and a pasted Lightly Worker selection config."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from lightly_tasks.active_learning_scores import class_labels, compute_scores
from lightly_tasks.config import ConfigError, param_schemas, parse_config
from lightly_tasks.selection import StoppingCondition, kcenter_greedy
from lightly_tasks.strategies import SelectionInputs, select_with_strategies, typicality

SCHEMA = {"task_type": "classification", "categories": [{"id": 0, "name": "car"}, {"id": 1, "name": "bus"},
                                                         {"id": 2, "name": "bike"}]}


def strategies(*entries: dict) -> tuple:
    """Parse entries the way a trigger conf is parsed (so the tests use the config's own types and checks)."""
    conf = {"datasource": {"uri": "file:///data"}, "dataset": "d", "selection_config": {"strategies": list(entries)}}
    return parse_config(conf).selection_config.strategies


def keys(n: int) -> list[str]:
    return [f"img-{i:05d}.png" for i in range(n)]


def points(n: int, d: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def min_pairwise(x: np.ndarray) -> float:
    d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    return float(d[np.triu_indices(len(x), 1)].min())


def classification(labels: list[int], probabilities: np.ndarray | None = None) -> dict[str, list[dict]]:
    preds = {}
    for i, (k, c) in enumerate(zip(keys(len(labels)), labels, strict=True)):
        p = {"category_id": int(c)}
        if probabilities is not None:
            p["probabilities"] = [float(v) for v in probabilities[i]]
        preds[k] = [p]
    return preds


def shares(labels: list[list[str]]) -> dict[str, float]:
    flat = pd.Series([name for sample in labels for name in sample])
    return flat.value_counts(normalize=True).to_dict()


DIVERSITY = {"input": {"type": "EMBEDDINGS"}, "strategy": {"type": "DIVERSITY"}}


def test_threshold_excludes_failing_and_missing_values() -> None:
    n = 300
    sharp = np.random.default_rng(1).uniform(0, 10, n)
    sharp[:10] = np.nan  # no metadata for these
    data = SelectionInputs(keys(n), points(n), metadata=pd.DataFrame({"sharpness": sharp}))
    entries = strategies(
        DIVERSITY,
        {"input": {"type": "METADATA", "key": "lightly.sharpness"},
         "strategy": {"type": "THRESHOLD", "threshold": 6, "operation": "BIGGER_EQUAL"}},
    )
    sel = select_with_strategies(entries, data, StoppingCondition(n_samples=1000))
    passing = np.flatnonzero(sharp >= 6)
    assert sorted(sel.indices) == sorted(passing)  # everything that passes, nothing else
    assert sel.summary[1]["nExcluded"] == n - len(passing) and sel.summary[1]["nMissing"] == 10
    assert set(np.flatnonzero(sel.excluded_by == 1)) == set(range(n)) - set(passing)


def test_thresholds_alone_leave_farthest_first_among_the_rest() -> None:
    x = points(300, seed=19)
    snr = np.random.default_rng(20).uniform(0, 1, 300)
    data = SelectionInputs(keys(300), x, metadata=pd.DataFrame({"snr": snr}))
    entries = strategies({"input": {"type": "METADATA", "key": "lightly.snr"},
                          "strategy": {"type": "THRESHOLD", "threshold": 0.5, "operation": "SMALLER"}})
    sel = select_with_strategies(entries, data, StoppingCondition(n_samples=20))
    rest = np.flatnonzero(snr < 0.5)
    ref = kcenter_greedy(x[rest], stop=StoppingCondition(n_samples=20))
    np.testing.assert_array_equal(sel.indices, rest[ref.indices])


def test_diversity_alone_is_farthest_first_and_spreads() -> None:
    x, existing = points(500, seed=2), points(20, seed=3)
    data = SelectionInputs(keys(500), x, existing=existing)
    sel = select_with_strategies(strategies(DIVERSITY), data, StoppingCondition(n_samples=40))
    ref = kcenter_greedy(x, existing=existing, stop=StoppingCondition(n_samples=40))
    np.testing.assert_array_equal(sel.indices, ref.indices)
    random = np.random.default_rng(0).choice(500, 40, replace=False)
    assert min_pairwise(x[sel.indices]) > 1.5 * min_pairwise(x[random])


def test_generic_path_tracks_diversity_exactly_and_counts_existing_samples() -> None:
    # A zero-strength second objective forces the combined loop; its picks must equal farthest-first's.
    x, existing = points(800, d=32, seed=4), points(30, d=32, seed=5)
    data = SelectionInputs(keys(800), x, existing=existing)
    zero = {"input": {"type": "RANDOM", "random_seed": 3}, "strategy": {"type": "WEIGHTS", "strength": 0}}
    sel = select_with_strategies(strategies(DIVERSITY, zero), data, StoppingCondition(n_samples=60))
    ref = kcenter_greedy(x, existing=existing, stop=StoppingCondition(n_samples=60))
    np.testing.assert_array_equal(sel.indices, ref.indices)
    np.testing.assert_allclose(sel.distances, ref.distances, rtol=1e-5)


def test_existing_samples_steer_diversity_away_from_what_the_dataset_has() -> None:
    rng = np.random.default_rng(6)
    shift = np.array([5.0, 0, 0, 0])
    a = rng.normal(0, 0.1, (200, 4)) + shift
    b = rng.normal(0, 0.1, (200, 4)) - shift
    x = np.vstack([a, b]).astype(np.float32)
    existing = a[:50].astype(np.float32) + np.float32(0.01)  # the dataset already covers cluster a
    noise = {"input": {"type": "RANDOM"}, "strategy": {"type": "WEIGHTS", "strength": 0.1}}
    sel = select_with_strategies(
        strategies(DIVERSITY, noise), SelectionInputs(keys(400), x, existing=existing), StoppingCondition(n_samples=10)
    )
    assert (sel.indices >= 200).all()


def test_weights_prefer_high_active_learning_scores() -> None:
    rng = np.random.default_rng(7)
    probs = rng.dirichlet([0.5, 0.5, 0.5], 400)
    preds = classification(probs.argmax(1).tolist(), probs)
    data = SelectionInputs(keys(400), points(400), predictions={"cls": (SCHEMA, preds)})
    entries = strategies({"input": {"type": "SCORES", "task": "cls", "score": "uncertainty_entropy"},
                          "strategy": {"type": "WEIGHTS"}})
    sel = select_with_strategies(entries, data, StoppingCondition(n_samples=25))
    entropy = compute_scores(keys(400), preds, "uncertainty_entropy", schema=SCHEMA)
    assert set(sel.indices) == set(np.argsort(-entropy, kind="stable")[:25])
    assert sel.summary[0]["inputMeanSelected"] > sel.summary[0]["inputMeanCandidates"]


def test_balance_reaches_the_target_shares() -> None:
    rng = np.random.default_rng(8)
    labels = rng.choice(3, 600, p=[0.75, 0.17, 0.08]).tolist()  # car-heavy input (48 bikes)
    data = SelectionInputs(keys(600), points(600), predictions={"cls": (SCHEMA, classification(labels))})
    balance = {"input": {"type": "PREDICTIONS", "task": "cls", "name": "CLASS_DISTRIBUTION"},
               "strategy": {"type": "BALANCE", "target": {"car": 0.4, "bus": 0.4, "bike": 0.2}}}
    sel = select_with_strategies(strategies(balance), data, StoppingCondition(n_samples=100))
    shares = np.bincount(np.asarray(labels)[sel.indices], minlength=3) / 100
    np.testing.assert_allclose(shares, [0.4, 0.4, 0.2], atol=0.02)
    with_diversity = select_with_strategies(strategies(balance, DIVERSITY), data, StoppingCondition(n_samples=100))
    shares = np.bincount(np.asarray(labels)[with_diversity.indices], minlength=3) / 100
    np.testing.assert_allclose(shares, [0.4, 0.4, 0.2], atol=0.05)


def test_balance_uniform_over_detected_objects() -> None:
    rng = np.random.default_rng(9)
    preds = {}
    for k in keys(300):  # mostly cars, a few buses and bikes, 1-3 objects per image
        objs = rng.choice(3, rng.integers(1, 4), p=[0.8, 0.15, 0.05])
        preds[k] = [{"category_id": int(c), "bbox": [0, 0, 5, 5], "score": 0.9} for c in objs]
    schema = {**SCHEMA, "task_type": "object-detection"}
    data = SelectionInputs(keys(300), points(300), predictions={"det": (schema, preds)})
    entry = {"input": {"type": "PREDICTIONS", "task": "det", "name": "CLASS_DISTRIBUTION"},
             "strategy": {"type": "BALANCE", "distribution": "UNIFORM"}}
    sel = select_with_strategies(strategies(entry), data, StoppingCondition(n_samples=40))
    before = shares(class_labels(keys(300), preds, schema=schema))
    after = shares(class_labels([keys(300)[i] for i in sel.indices], preds, schema=schema))
    assert before["car"] > 0.7
    assert after["car"] < 0.5 and after["bike"] > 2 * before["bike"]


def test_similarity_picks_the_nearest_to_the_query() -> None:
    x = points(500, seed=10)
    query = points(3, seed=11)
    asked = []

    def resolve(inp):
        asked.append(inp.tag_name)
        return query

    data = SelectionInputs(keys(500), x, query=resolve)
    entry = {"input": {"type": "EMBEDDINGS", "tag_name": "hard-cases"}, "strategy": {"type": "SIMILARITY"}}
    sel = select_with_strategies(strategies(entry), data, StoppingCondition(n_samples=15))
    nearest = np.sqrt(((x[:, None] - query[None]) ** 2).sum(-1)).min(1)
    assert asked == ["hard-cases"]
    assert set(sel.indices) == set(np.argsort(nearest)[:15])


def test_typicality_avoids_outliers_that_diversity_picks() -> None:
    rng = np.random.default_rng(12)
    dense = rng.normal(0, 1, (400, 6))
    outliers = rng.normal(0, 1, (20, 6)) * 0.3 + rng.choice([-8, 8], (20, 6))
    x = np.vstack([dense, outliers]).astype(np.float32)
    data = SelectionInputs(keys(420), x)
    typical = select_with_strategies(
        strategies({"input": {"type": "EMBEDDINGS"}, "strategy": {"type": "TYPICALITY"}}), data,
        StoppingCondition(n_samples=30),
    )
    diverse = select_with_strategies(strategies(DIVERSITY), data, StoppingCondition(n_samples=30))
    assert (typical.indices < 400).all()
    assert (diverse.indices >= 400).sum() >= 15
    mixed = select_with_strategies(
        strategies(DIVERSITY, {"input": {"type": "EMBEDDINGS"}, "strategy": {"type": "TYPICALITY", "strength": 3}}),
        data, StoppingCondition(n_samples=30),
    )
    assert (mixed.indices >= 400).sum() < (diverse.indices >= 400).sum()
    assert min_pairwise(x[mixed.indices]) > min_pairwise(x[typical.indices])


def test_diverse_but_typical_mix_covers_like_farthest_first_with_typical_picks() -> None:
    rng = np.random.default_rng(21)
    x = np.vstack([rng.normal(0, 1, (600, 5)), rng.normal(0, 1, (10, 5)) * 0.2 + 6]).astype(np.float32)
    data = SelectionInputs(keys(610), x)
    mix = strategies(DIVERSITY, {"input": {"type": "EMBEDDINGS"}, "strategy": {"type": "TYPICALITY"}})
    sel = select_with_strategies(mix, data, StoppingCondition(n_samples=25))
    ref = kcenter_greedy(x, stop=StoppingCondition(n_samples=25))
    assert sel.summary[1]["algorithm"].startswith("coverage-capped representative")

    def nearest(picks: np.ndarray) -> np.ndarray:
        return np.sqrt(((x[:, None] - x[picks][None]) ** 2).sum(-1)).min(1)

    assert len(set(sel.indices)) == 25
    assert nearest(sel.indices).max() <= nearest(ref.indices).max() * (1 + 1e-5)  # covers as well
    assert nearest(sel.indices).mean() < nearest(ref.indices).mean()  # and represents better


def test_typicality_uses_a_reference_subset_for_large_sets(monkeypatch) -> None:
    import lightly_tasks.strategies as strategies_module

    x = points(3000, d=4, seed=13)
    x[0] = 50  # one far outlier
    full = typicality(x, 10)
    monkeypatch.setattr(strategies_module, "TYPICALITY_REFERENCE", 500)
    sub = typicality(x, 10)
    assert full.argmin() == sub.argmin() == 0
    assert np.corrcoef(full, sub)[0, 1] > 0.9


def test_combination_trades_off_by_strength() -> None:
    x = points(600, seed=14)
    weight = np.random.default_rng(15).uniform(0.1, 1, 600)
    data = SelectionInputs(keys(600), x, metadata=pd.DataFrame({"snr": weight}))
    mean_weight, spread = [], []
    for strength in (0.1, 1.0, 10.0):
        entries = strategies(DIVERSITY, {"input": {"type": "METADATA", "key": "lightly.snr"},
                                         "strategy": {"type": "WEIGHTS", "strength": strength}})
        sel = select_with_strategies(entries, data, StoppingCondition(n_samples=40))
        mean_weight.append(weight[sel.indices].mean())
        spread.append(min_pairwise(x[sel.indices]))
        contribution = sel.summary[1]["contribution"]
        assert 0 <= contribution <= 1 and abs(sel.summary[0]["contribution"] + contribution - 1) < 1e-3
    assert mean_weight[0] < mean_weight[1] < mean_weight[2]
    assert spread[0] > spread[2]


def test_stopping_conditions_of_the_strategies() -> None:
    x = points(400, d=4, seed=16)
    data = SelectionInputs(keys(400), x, metadata=pd.DataFrame({"sizeInBytes": np.full(400, 10.0)}))
    far = {"input": {"type": "EMBEDDINGS"},
           "strategy": {"type": "DIVERSITY", "stopping_condition_minimum_distance": 1.0}}
    noise = {"input": {"type": "RANDOM"}, "strategy": {"type": "WEIGHTS", "strength": 0.01}}
    sel = select_with_strategies(strategies(far, noise), data, StoppingCondition(n_samples=400))
    assert sel.stopped_by == "min_distance" and 5 < len(sel.indices) < 400
    assert min_pairwise(x[sel.indices]) >= 1.0
    budget = {"input": {"type": "METADATA", "key": "lightly.sizeInBytes"},
              "strategy": {"type": "WEIGHTS", "stopping_condition_max_sum": 95}}
    sel = select_with_strategies(strategies(budget), data, StoppingCondition(n_samples=400))
    assert sel.stopped_by == "max_sum" and len(sel.indices) == 10
    typical = {"input": {"type": "EMBEDDINGS"},
               "strategy": {"type": "TYPICALITY", "stopping_condition_minimum_typicality": 0.8}}
    sel = select_with_strategies(strategies(typical), data, StoppingCondition(proportion_samples=1.0))
    assert sel.stopped_by == "minimum_typicality"
    assert (typicality(x)[sel.indices] >= 0.8).all() and 0 < len(sel.indices) < 400


def test_active_learning_scores_match_lightly_definitions() -> None:
    preds = classification([0, 0, 1], np.array([[1, 0, 0], [1 / 3, 1 / 3, 1 / 3], [0.2, 0.5, 0.3]]))
    k = [*keys(3), "no-predictions.png"]
    np.testing.assert_allclose(
        compute_scores(k, preds, "uncertainty_least_confidence", schema=SCHEMA), [0, 1, 0.75, np.nan]
    )
    np.testing.assert_allclose(compute_scores(k, preds, "uncertainty_margin", schema=SCHEMA), [0, 1, 0.8, np.nan])
    entropy = compute_scores(k, preds, "uncertainty_entropy", schema=SCHEMA)
    np.testing.assert_allclose(entropy[:2], [0, 1])
    assert 0.9 < entropy[2] < 1
    box = {"bbox": [0, 0, 1, 1], "score": 0.9}
    det = {"a": [{**box, "category_id": 0}] * 3 + [{**box, "category_id": 1}],  # 1 + 0.25 * 2 + 1 = 2.5
           "b": [{**box, "category_id": 0}],  # 1
           "c": [{**box, "category_id": 0, "score": 0.5}]}
    np.testing.assert_allclose(compute_scores(["a", "b", "c"], det, "object_frequency"), [1.0, 0.9, 0.9])
    # detections without probabilities: the score s as the distribution (s, 1 - s); the most uncertain object
    np.testing.assert_allclose(compute_scores(["b", "c"], det, "uncertainty_margin"), [0.2, 1.0])


PASTED_LIGHTLY_CONFIG = """
{
  "n_samples": 30,
  "strategies": [
    {"input": {"type": "EMBEDDINGS"},
     "strategy": {"type": "DIVERSITY", "stopping_condition_minimum_distance": 0.05, "strength": 0.6}},
    {"input": {"type": "SCORES", "task": "my_classification_task", "score": "uncertainty_margin"},
     "strategy": {"type": "WEIGHTS", "strength": 1.0}},
    {"input": {"type": "METADATA", "key": "lightly.sharpness"},
     "strategy": {"type": "THRESHOLD", "threshold": 2.5, "operation": "BIGGER"}},
    {"input": {"type": "PREDICTIONS", "task": "my_classification_task", "name": "CLASS_DISTRIBUTION"},
     "strategy": {"type": "BALANCE", "target": {"car": 0.5, "bus": 0.3, "bike": 0.2}, "strength": 2}},
    {"input": {"type": "RANDOM", "random_seed": 42}, "strategy": {"type": "WEIGHTS", "strength": 0.2}},
    {"input": {"type": "EMBEDDINGS"}, "strategy": {"type": "TYPICALITY", "strength": 0.5}}
  ]
}
"""


def test_pasted_lightly_worker_config_parses_and_runs_unchanged() -> None:
    selection_config = json.loads(PASTED_LIGHTLY_CONFIG)
    cfg = parse_config({"datasource": {"uri": "file:///data"}, "dataset": "d", "selection_config": selection_config})
    assert cfg.stopping_condition.n_samples == 30  # selection_config.n_samples replaces the default 100
    rng = np.random.default_rng(17)
    n = 500
    labels = rng.choice(3, n, p=[0.8, 0.15, 0.05]).tolist()
    probs = rng.dirichlet([1, 1, 1], n)
    preds = classification(labels, probs)
    sharp = rng.uniform(0, 5, n)
    data = SelectionInputs(keys(n), points(n, seed=18), metadata=pd.DataFrame({"sharpness": sharp}),
                           predictions={"my_classification_task": (SCHEMA, preds)})
    stop = StoppingCondition(n_samples=cfg.stopping_condition.n_samples)
    sel = select_with_strategies(cfg.selection_config.strategies, data, stop)
    assert len(sel.indices) == 30 and len(set(sel.indices)) == 30
    assert (sharp[sel.indices] > 2.5).all()
    shares = np.bincount(np.asarray(labels)[sel.indices], minlength=3) / 30
    assert shares[0] < 0.65 and shares[2] > 0.1  # pulled from 80/15/5 towards 50/30/20
    assert [s["type"] for s in sel.summary] == ["DIVERSITY", "WEIGHTS", "THRESHOLD", "BALANCE", "WEIGHTS", "TYPICALITY"]
    assert sel.summary[2]["nExcluded"] == int((sharp <= 2.5).sum())
    assert abs(sum(s.get("contribution", 0) for s in sel.summary) - 1) < 1e-3
    json.dumps(sel.summary)  # report-ready
    # the same config through the DAG's form: the Param built from the schema accepts it as pasted
    from airflow.sdk import Param

    schema = dict(param_schemas()["selection_config"])
    default = schema.pop("default")
    param = Param(default, **schema)
    assert param.resolve(selection_config) == selection_config


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"input": {"type": "SCORES", "task": "t"}, "strategy": {"type": "WEIGHTS"}},
         "selection_config.strategies[1].input.score: is required"),
        ({"input": {"type": "EMBEDDINGS"}, "strategy": {"type": "WEIGHTS"}},
         "selection_config.strategies[1].input.type: WEIGHTS works on SCORES or METADATA or RANDOM"),
        ({"input": {"type": "METADATA", "key": "k"}, "strategy": {"type": "THRESHOLD", "threshold": 1}},
         "selection_config.strategies[1].strategy.operation: is required"),
        ({"input": {"type": "METADATA", "key": "k"}, "strategy": {"type": "THRESHOLD", "threshold": 1,
                                                                  "operation": "GREATER"}},
         "selection_config.strategies[1].strategy.operation: must be one of"),
        ({"input": {"type": "PREDICTIONS", "task": "t", "name": "CLASS_DISTRIBUTION"},
          "strategy": {"type": "BALANCE", "target": {"a": 0.8, "b": 0.4}}},
         "selection_config.strategies[1].strategy.target: shares must sum to at most 1"),
        ({"input": {"type": "EMBEDDINGS"}, "strategy": {"type": "SIMILARITY"}},
         "selection_config.strategies[1].input.tag_name: SIMILARITY needs a query set"),
        ({"input": {"type": "EMBEDDINGS"}, "strategy": {"type": "DIVERSITY", "threshold": 0.3}},
         "selection_config.strategies[1].strategy.threshold: only applies to THRESHOLD"),
        ({"input": {"type": "EMBEDDINGS", "tagname": "x"}, "strategy": {"type": "DIVERSITY"}},
         "selection_config.strategies[1].input.tagname: unknown key"),
        ({"input": {"type": "EMBEDDINGS"}, "strategy": {"type": "DIVERSITY", "strength": "high"}},
         "selection_config.strategies[1].strategy.strength: expected a number"),
    ],
)
def test_config_errors_name_the_strategy_and_key(entry: dict, message: str) -> None:
    conf = {"datasource": {"uri": "file:///data"}, "dataset": "d",
            "selection_config": {"strategies": [DIVERSITY, entry]}}
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_config(conf)


def test_unavailable_inputs_fail_naming_the_strategy() -> None:
    data = SelectionInputs(keys(50), points(50), metadata=pd.DataFrame({"sharpness": np.ones(50)}))
    missing_key = r"strategies\[1\]\.input\.key: no metadata 'lightly.weather'.*lightly.sharpness"
    with pytest.raises(ValueError, match=missing_key):
        select_with_strategies(
            strategies(DIVERSITY, {"input": {"type": "METADATA", "key": "lightly.weather"},
                                   "strategy": {"type": "WEIGHTS"}}),
            data, StoppingCondition(n_samples=5),
        )
    with pytest.raises(ValueError, match=r"strategies\[0\]\.input\.task: no predictions of task 'missing'"):
        select_with_strategies(
            strategies({"input": {"type": "SCORES", "task": "missing", "score": "uncertainty_margin"},
                        "strategy": {"type": "WEIGHTS"}}),
            data, StoppingCondition(n_samples=5),
        )
