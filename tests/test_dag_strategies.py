"""``lightly_curation`` run in-process (``dag.test()``) with a multi-strategy Lightly Worker selection config.

The datasource holds real images (with broken files and a duplicate) and the user's own classification
predictions in the Lightly format under ``.lightly/predictions/`` (written with :mod:`lightly_tasks.predictions`,
read back by the selection stage as the Lightly Worker reads them).
"""

from __future__ import annotations

import hashlib
import json

import pandas as pd
import pytest

from lightly_tasks.demo_data import build_demo_folder
from lightly_tasks.predictions import PredictionSchema, write_predictions, write_task
from lightly_tasks.storage import location_from_uri
from tests.airflow_dags import load_dag

pytestmark = pytest.mark.dag

N_SAMPLES = 8
CATEGORIES = ["indoor", "outdoor", "texture"]


def _label(key: str) -> tuple[int, list[float]]:
    """A deterministic made-up classification of a key: mostly 'indoor', uncertain for some."""
    h = hashlib.sha256(key.encode()).digest()
    cls = 0 if h[0] < 170 else (1 if h[0] < 230 else 2)
    confidence = 0.4 + 0.6 * h[1] / 255
    probs = [(1 - confidence) / 2] * 3
    probs[cls] = confidence
    return cls, probs


@pytest.fixture(scope="module")
def run(tmp_path_factory, airflow_db):
    root = tmp_path_factory.mktemp("strategies")
    images = root / "images"
    demo = build_demo_folder(images, n_images=24, seed=5)
    source = location_from_uri(images.as_uri())
    write_task(source, "scene", PredictionSchema.from_names("classification", CATEGORIES))
    labels = {k: _label(k) for k in demo.all_keys()}
    write_predictions(source, "scene", {k: [{"category_id": c, "probabilities": p}] for k, (c, p) in labels.items()})
    candidates = sorted(set(demo.real) | set(demo.convertible))
    sizes = {k: (images / k).stat().st_size for k in candidates}
    threshold = sorted(sizes.values())[len(sizes) // 4]  # excludes about a quarter of the candidates
    query = [k for k in candidates if sizes[k] > threshold][:2]  # SIMILARITY to two of this run's samples
    selection_config = {
        "n_samples": N_SAMPLES,
        "strategies": [
            {"input": {"type": "EMBEDDINGS"}, "strategy": {"type": "DIVERSITY", "strength": 1.0}},
            {"input": {"type": "METADATA", "key": "lightly.sizeInBytes"},
             "strategy": {"type": "THRESHOLD", "threshold": threshold, "operation": "BIGGER"}},
            {"input": {"type": "RANDOM", "random_seed": 7}, "strategy": {"type": "WEIGHTS", "strength": 0.3}},
            {"input": {"type": "SCORES", "task": "scene", "score": "uncertainty_entropy"},
             "strategy": {"type": "WEIGHTS", "strength": 0.5}},
            {"input": {"type": "PREDICTIONS", "task": "scene", "name": "CLASS_DISTRIBUTION"},
             "strategy": {"type": "BALANCE", "distribution": "UNIFORM", "strength": 2.0}},
            {"input": {"type": "EMBEDDINGS", "file_names": query}, "strategy": {"type": "SIMILARITY", "strength": 0.2}},
        ],
    }
    conf = {
        "datasource": {"uri": images.as_uri()},
        "dataset": "ds",
        "selection_config": selection_config,
        "artifacts_root": (root / "artifacts").as_uri(),
        "store_url": f"sqlite:///{root / 'store.db'}",
        "embedding": {"image_size": 64},
        "num_shards": 1,
    }
    dag = load_dag("lightly_curation")
    dag_run = dag.test(run_conf=conf)
    from lightly_tasks.artifacts import safe_run_id

    run_dir = root / "artifacts" / "ds" / "runs" / safe_run_id(dag_run.run_id)
    report = json.loads((run_dir / "report.json").read_text()) if (run_dir / "report.json").exists() else None
    return {"dag_run": dag_run, "report": report, "run_dir": run_dir, "sizes": sizes, "threshold": threshold,
            "labels": labels, "candidates": candidates, "query": query}


def test_multi_strategy_run_selects_within_the_threshold(run):
    assert run["dag_run"].state == "success"
    report = run["report"]
    assert report["datasetSizes"]["nSelected"] == N_SAMPLES
    objects = pd.read_parquet(run["run_dir"] / "selection" / "objects.parquet")
    selected = objects.loc[objects["status"] == "selected", "key"].tolist()
    assert len(selected) == N_SAMPLES
    assert all(run["sizes"][k] > run["threshold"] for k in selected)
    assert set(run["query"]) <= set(selected)  # the query samples themselves are the most similar
    excluded = objects[objects["reason"].fillna("").str.startswith("THRESHOLD: lightly.sizeInBytes not BIGGER")]
    expected = {k for k, size in run["sizes"].items() if size <= run["threshold"]}
    assert set(excluded["key"]) == expected and set(excluded["status"]) == {"not_selected"}


def test_report_has_the_strategy_summary(run):
    strategies = run["report"]["selection"]["strategies"]
    assert [(s["inputType"], s["type"]) for s in strategies] == [
        ("EMBEDDINGS", "DIVERSITY"), ("METADATA", "THRESHOLD"), ("RANDOM", "WEIGHTS"), ("SCORES", "WEIGHTS"),
        ("PREDICTIONS", "BALANCE"), ("EMBEDDINGS", "SIMILARITY"),
    ]
    assert strategies[1]["nExcluded"] == sum(size <= run["threshold"] for size in run["sizes"].values())
    assert strategies[2]["strength"] == 0.3 and strategies[2]["input"] == {"type": "RANDOM", "random_seed": 7}
    contributions = [s["contribution"] for s in strategies if s["type"] != "THRESHOLD"]
    assert all(c > 0 for c in contributions) and abs(sum(contributions) - 1) < 1e-3
    assert set(strategies[4]["target"]) == set(CATEGORIES)


def test_report_has_the_class_distribution_before_and_after(run):
    dist = run["report"]["classDistribution"]["scene"]
    names = {c: CATEGORIES[run["labels"][c][0]] for c in run["candidates"]}
    before = pd.Series(list(names.values())).value_counts().to_dict()
    assert dist["before"]["counts"] == {name: before.get(name, 0) for name in CATEGORIES}
    assert dist["before"]["nSamples"] == dist["before"]["nWithPredictions"] == len(run["candidates"])
    assert dist["after"]["nSamples"] == N_SAMPLES and sum(dist["after"]["counts"].values()) == N_SAMPLES
    # UNIFORM balance pulls the selection away from the input's majority class
    assert dist["after"]["shares"].get("indoor", 0) < dist["before"]["shares"]["indoor"]
