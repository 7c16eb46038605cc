"""Benchmark: network traffic per stage of one curation run on an S3 datasource, measured on the wire.

Starts its own S3 emulator (moto server on loopback) with the byte-counting proxy of
``tests/traffic_proxy.py`` in front of it, uploads a demo dataset of real images (plus the demo's broken
files) to a datasource bucket, and runs the pipeline's stages one after another exactly as the DAG's tasks
call them (each stage gets a fresh run context from ``lightly_airflow.context.run_context``, so Locations
come from the Airflow connection). Artifacts and the dump of the selected images go to other buckets.

For every stage it prints the bytes that crossed the network from the datasource bucket (all responses,
HTTP framing included), that figure over the dataset bytes, the bytes the stage itself reported, how well
the two agree, and the stage's seconds.

Run: ``python bench/traffic.py [--n 300] [--n-samples 30] [--image-size 224] [--no-dump]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "plugins")]
_HOME = Path(tempfile.mkdtemp(prefix="lightly-bench-traffic-"))
os.environ.setdefault("AIRFLOW_HOME", str(_HOME / "airflow"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")

from lightly_tasks import pipeline  # noqa: E402
from lightly_tasks.demo_data import build_demo_folder  # noqa: E402
from tests.s3_server import S3Emulator, s3_emulator  # noqa: E402
from tests.traffic_proxy import Exchange  # noqa: E402


def _wire(exchanges: list[Exchange]) -> tuple[int, int]:
    """(requests, response bytes with framing) of a list of exchanges."""
    return len(exchanges), sum(e.response_bytes for e in exchanges)


def run(n_images: int, n_samples: int, image_size: int, dump: bool) -> list[dict[str, Any]]:
    """Run the stages once on a fresh emulator; one row of figures per stage (and a total row)."""
    with s3_emulator() as s3:
        os.environ["AIRFLOW_CONN_AWS_DEFAULT"] = s3.connection_json()
        return _run_stages(s3, n_images, n_samples, image_size, dump)


def _run_stages(s3: S3Emulator, n_images: int, n_samples: int, image_size: int, dump: bool) -> list[dict]:
    from lightly_airflow.context import run_context

    folder = _HOME / "images"
    build_demo_folder(folder, n_images=n_images, seed=0)
    src, art, out = s3.new_bucket("src"), s3.new_bucket("artifacts"), s3.new_bucket("out")
    s3.upload_folder(folder, src, "raw/")
    conf = {
        "datasource": {"uri": f"s3://{src}/raw"},
        "dataset": "bench",
        "stopping_condition": {"n_samples": n_samples},
        "artifacts_root": f"s3://{art}/lightly",
        "store_url": f"sqlite:///{_HOME / 'store.db'}",
        "dump": {"output": f"s3://{out}/selected" if dump else None},
        "embedding": {"image_size": image_size},
    }
    run_id = f"bench__{time.strftime('%Y%m%dT%H%M%S')}"
    rows: list[dict[str, Any]] = []

    def stage(name: str, call: Callable[[], Any]) -> Any:
        s3.proxy.reset()
        started = time.monotonic()
        result = call()
        seconds = time.monotonic() - started
        manifests = result if isinstance(result, list) else [result]
        requests, wire = _wire(s3.proxy.exchanges(src))
        rows.append(
            {
                "stage": name,
                "requests": requests,
                "wire": wire,
                "reported": sum(int(m.get("bytes_read", 0)) for m in manifests),
                "seconds": seconds,
                "other": sum(e.request_bytes + e.response_bytes for e in others()),
            }
        )
        return result

    def others() -> list[Exchange]:
        return s3.proxy.exchanges(art) + s3.proxy.exchanges(out)

    def ctx() -> pipeline.RunContext:
        return run_context(conf, run_id)

    shards = stage("list", lambda: pipeline.per_shard(pipeline.list_stage(ctx())))
    decoded = stage("corruptness", lambda: [pipeline.corruptness_stage(ctx(), m["shard"]) for m in shards])
    embedded = stage("embedding", lambda: [pipeline.embedding_stage(ctx(), m["shard"]) for m in decoded])
    selected = stage("selection", lambda: pipeline.selection_stage(ctx(), [m["shard"] for m in embedded]))
    meta = stage("metadata", lambda: pipeline.metadata_stage(ctx()))
    upload = stage(
        "upload" + (" + dump" if dump else ""),
        lambda: pipeline.upload_stage(
            ctx(), listing=shards[0], decoded=decoded, embedded=embedded, selection=selected, metadata=meta
        ),
    )
    dataset_bytes = int(shards[0]["datasource_bytes"])
    for row in rows:
        row["dataset"] = dataset_bytes
    rows.append(
        {
            "stage": "total",
            "requests": sum(r["requests"] for r in rows),
            "wire": sum(r["wire"] for r in rows),
            "reported": sum(r["reported"] for r in rows),
            "seconds": sum(r["seconds"] for r in rows),
            "other": sum(r["other"] for r in rows),
            "dataset": dataset_bytes,
        }
    )
    report_traffic = upload["traffic"]
    assert report_traffic["bytesRead"] == rows[-1]["reported"], (report_traffic, rows[-1])
    print(
        f"dataset: {shards[0]['n_objects']} objects, {dataset_bytes:,} bytes in s3://{src}/raw; "
        f"selected {selected['n_selected']}, corrupt {selected['n_corrupt']}, "
        f"duplicates {selected['n_duplicate']}"
    )
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    header = (
        f"{'stage':<15} {'requests':>8} {'wire bytes':>12} {'wire/dataset':>12} {'reported':>12} "
        f"{'reported/dataset':>16} {'agreement':>9} {'seconds':>8} {'other buckets':>14}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        if r["reported"]:
            agreement = f"{100 * (r['wire'] - r['reported']) / r['reported']:+.2f}%"
        else:
            agreement = "n/a"
        print(
            f"{r['stage']:<15} {r['requests']:>8} {r['wire']:>12,} {r['wire'] / r['dataset']:>12.4f} "
            f"{r['reported']:>12,} {r['reported'] / r['dataset']:>16.4f} {agreement:>9} {r['seconds']:>8.2f} "
            f"{r['other']:>14,}"
        )
    print(
        "wire bytes: every response from the datasource bucket as it crossed the proxy (headers included); "
        "agreement: (wire - reported) / reported; other buckets: artifacts and dump traffic, both directions "
        "(not datasource traffic)."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/traffic.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=300, help="real images in the dataset (default 300)")
    parser.add_argument("--n-samples", type=int, default=30, help="images to select (default 30)")
    parser.add_argument("--image-size", type=int, default=224, help="decoded cache / model input side")
    parser.add_argument("--no-dump", action="store_true", help="do not copy the selected images")
    args = parser.parse_args(argv)
    try:
        rows = run(args.n, args.n_samples, args.image_size, dump=not args.no_dump)
    finally:
        shutil.rmtree(_HOME, ignore_errors=True)
    print_table(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
