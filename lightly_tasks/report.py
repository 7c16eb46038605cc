"""A run's outputs: ``report.json``, the filename lists, Lightly's ``embeddings.csv`` and the dump of originals."""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from lightly_tasks import artifacts
from lightly_tasks.progress import Progress
from lightly_tasks.storage import ByteCounter, Location, iter_object, safe_key

log = logging.getLogger(__name__)


def write_filenames(run: Location, name: str, keys: Sequence[str]) -> str:
    """``filenames/<name>_filenames.txt``: one key per line, as the Lightly Worker writes them."""
    body = "".join(f"{k}\n" for k in keys)
    return artifacts.write_bytes(run, f"filenames/{name}_filenames.txt", body.encode())


def embeddings_csv(keys: Sequence[str], vectors: np.ndarray, labels: Sequence[int] | None = None) -> bytes:
    """Lightly's ``embeddings.csv``: ``filenames,embedding_0..embedding_{D-1},labels``; (N, D) float32 in."""
    dim = vectors.shape[1] if vectors.ndim == 2 and len(vectors) else 0
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["filenames", *(f"embedding_{i}" for i in range(dim)), "labels"])
    labels = labels if labels is not None else [0] * len(keys)
    for key, row, label in zip(keys, vectors, labels, strict=True):
        writer.writerow([key, *(f"{v:.8g}" for v in row), label])
    return out.getvalue().encode()


def dump_selected(
    datasource: Location,
    output: Location,
    keys: Sequence[str],
    counter: ByteCounter,
    sizes: Sequence[int] | None = None,
) -> int:
    """Copy the selected originals to ``output`` under their relative keys; returns the number copied.

    Each object is streamed (ranged GETs for large ones, see :func:`iter_object`); ``sizes`` are the listed
    sizes. Keys that would escape the output root (``..``, absolute paths) raise ValueError before anything
    is read.
    """
    targets = [(key, safe_key(key)) for key in keys]
    sizes = list(sizes) if sizes is not None else [None] * len(targets)
    progress = Progress("dump", len(targets))
    for (key, relative), size in zip(targets, sizes, strict=True):
        artifacts.write_chunks(output, relative, iter_object(datasource, key, counter, size=size))
        progress.update()
    progress.finish()
    return len(targets)


def build_report(
    *,
    dataset: str,
    run_id: str,
    config: dict[str, Any],
    counts: dict[str, int],
    stages: dict[str, dict[str, Any]],
    datasource_bytes: int,
    outputs: dict[str, str],
    selection: dict[str, Any],
    training: dict[str, Any] | None = None,
    strategies: list[dict[str, Any]] | None = None,
    class_distribution: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``report.json`` document: Lightly-style ``datasetSizes``, ``traffic`` and per-stage figures.

    ``training`` ({method, epochs, lossPerEpoch, ...}) is included when the run trained its embedding model.
    ``strategies`` (one entry per selection strategy: input, strategy, strength, nExcluded, contribution, ...)
    goes to ``selection.strategies``; ``class_distribution`` ({task: {before, after}}, the candidates' and the
    selected samples' predicted classes) to ``classDistribution``, when predictions exist.
    """
    bytes_read = sum(int(s.get("bytesRead", 0)) for s in stages.values())
    report = {
        "dataset": dataset,
        "runId": run_id,
        "datasetSizes": counts,
        "traffic": {
            "datasourceBytes": datasource_bytes,
            "bytesRead": bytes_read,
            "ratio": round(bytes_read / datasource_bytes, 4) if datasource_bytes else None,
        },
        "selection": {**selection, **({"strategies": strategies} if strategies else {})},
        "stages": stages,
        "outputs": outputs,
        "config": config,
    }
    if training is not None:
        report["training"] = training
    if class_distribution:
        report["classDistribution"] = class_distribution
    return report


def latest_report(dataset: Location) -> tuple[str, dict[str, Any]]:
    """The newest ``report.json`` under ``<artifacts_root>/<dataset>/runs/`` (by modification time)."""
    runs = dataset.child("runs")
    candidates = []
    for path in dataset.fs.glob(runs.path("*", "report.json")):
        info = dataset.fs.info(path)
        candidates.append((info.get("mtime") or info.get("LastModified") or 0, path))
    if not candidates:
        raise FileNotFoundError(f"no report.json under {runs.uri}")
    _, path = max(candidates, key=lambda c: c[0])
    relative = path[len(runs.root.rstrip("/")) + 1 :]
    return runs.child_uri(relative), artifacts.read_json(runs, relative)


def format_summary(report: dict[str, Any], report_uri: str) -> str:
    """A short human summary of a run for the terminal."""
    sizes, traffic, outputs = report["datasetSizes"], report["traffic"], report["outputs"]
    run_uri = report_uri.rsplit("/", 1)[0]
    ratio = f"{traffic['ratio']:.2f}x" if traffic.get("ratio") is not None else "n/a"
    lines = [
        f"Curation run {report['runId']} of dataset {report['dataset']!r}",
        f"  objects seen        {sizes['nListed']} ({sizes['nSkippedSeen']} already in the datapool, "
        f"{sizes['nInput']} processed)",
        f"  corrupt             {sizes['nCorrupt']}",
        f"  exact duplicates    {sizes['nDuplicate']}",
        f"  selected            {sizes['nSelected']} (dataset now {sizes.get('nDatasetAfter', '?')} samples)",
        f"  bytes read          {traffic['bytesRead']:,} of {traffic['datasourceBytes']:,} dataset bytes ({ratio})",
        f"  report              {report_uri}",
        f"  selected filenames  {outputs.get('selected_filenames', run_uri + '/filenames/selected_filenames.txt')}",
        f"  corrupt filenames   {outputs.get('corrupt_filenames', '')}",
        f"  embeddings.csv      {outputs.get('embeddings_csv', '')}",
    ]
    if outputs.get("dump"):
        lines.append(f"  selected copied to  {outputs['dump']}")
    return "\n".join(lines)
