"""Benchmark: end-to-end decode + embed throughput against pure model inference on the same tensors.

Writes N real JPEG photos (crops of the bundled demo sources) at a realistic size, then measures:

1. ``decode``: the decoding pass (:func:`lightly_tasks.decoding.decode_shard`: read, SHA-256, verify, decode,
   metadata, thumbnail, cache parts) over the folder;
2. ``embed from cache``: :func:`lightly_tasks.embedding.embed` over the cache, as the embedding stage does;
3. ``model only``: the same model on the same images, already normalised float tensors in memory, batch by
   batch: the ceiling that the pipeline can reach.

End-to-end rate = N / (decode + embed from cache); the goal is >= 0.8 of the model-only rate. A per-step
profile of the decoding pass (single-threaded, per image) shows where the rest of the time goes.

Run: ``python bench/embedding.py [--n 200] [--width 640 --height 480] [--batch-size 32] [--threads T]``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lightly_tasks import decoding
from lightly_tasks.corruptness import check_image
from lightly_tasks.demo_data import SOURCES, source_image
from lightly_tasks.embedding import IMAGENET_MEAN, IMAGENET_STD, build_model, embed
from lightly_tasks.metadata import reduced_decode_size, working_copy, working_copy_metadata
from lightly_tasks.storage import ByteCounter, list_objects, location_from_uri


def write_photos(folder: Path, n: int, size: tuple[int, int], seed: int = 0) -> int:
    """Write ``n`` distinct JPEG crops of the demo sources at ``size``; return the total bytes."""
    rng = random.Random(seed)
    names = sorted(SOURCES)
    total = 0
    for i in range(n):
        photo = source_image(names[i % len(names)]).convert("RGB")
        w, h = photo.size
        cw, ch = round(w * (0.5 + 0.5 * rng.random())), round(h * (0.5 + 0.5 * rng.random()))
        left, top = round((w - cw) * rng.random()), round((h - ch) * rng.random())
        image = photo.resize(size, Image.Resampling.BILINEAR, box=(left, top, left + cw, top + ch))
        path = folder / f"{names[i % len(names)]}/{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, "JPEG", quality=90)
        total += path.stat().st_size
    return total


def model_only(model: torch.nn.Module, images: np.ndarray, batch_size: int) -> tuple[float, float]:
    """Wall and CPU seconds of the forward passes over ``images`` (N, S, S, 3) as normalised tensors."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
    x = ((x - mean) / std).contiguous(memory_format=torch.channels_last)
    batches = list(torch.split(x, batch_size))
    model = model.to(memory_format=torch.channels_last).eval()
    with torch.inference_mode():
        model(batches[0])  # warm-up: oneDNN primitive creation
        started, cpu = time.perf_counter(), time.process_time()
        for batch in batches:
            model(batch)
        return time.perf_counter() - started, time.process_time() - cpu


def profile_decode(paths: list[Path], image_size: int) -> dict[str, float]:
    """Mean CPU milliseconds per image of each step of the decoding pass, single-threaded.

    The steps of :func:`lightly_tasks.decoding.decode_object`, timed one by one, then the whole call again.
    """
    steps = dict.fromkeys(("read", "sha256", "check_image", "working copy", "metadata", "thumbnail"), 0.0)
    whole = 0.0

    def draft_size(width: int, height: int) -> tuple[int, int]:
        return reduced_decode_size(width, height, min_side=image_size)

    for path in paths:
        t0 = time.process_time()
        data = path.read_bytes()
        t1 = time.process_time()
        hashlib.sha256(data).hexdigest()
        t2 = time.process_time()
        check = check_image(data, draft_size=draft_size)
        t3 = time.process_time()
        assert check.image is not None and check.full_size is not None
        work = working_copy(check.image, full_size=check.full_size)
        t4 = time.process_time()
        width, height = check.full_size
        working_copy_metadata(work, width=width, height=height, size_in_bytes=len(data))
        t5 = time.process_time()
        decoding.thumbnail(work if min(work.size) >= image_size else check.image, image_size)
        t6 = time.process_time()
        decoding.decode_object(data, image_size=image_size)
        whole += time.process_time() - t6
        for name, seconds in zip(steps, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5), strict=True):
            steps[name] += seconds
    result = {name: 1000 * total / len(paths) for name, total in steps.items()}
    result["decode_object"] = 1000 * whole / len(paths)
    return result


def profile_check_image(path: Path, image_size: int) -> dict[str, float]:
    """CPU milliseconds of check_image's steps on one image (mean of 10): open, decode (reduced when it
    can be), orientation + RGB copy."""
    data = path.read_bytes()
    out = {"open": 0.0, "decode (load)": 0.0, "orient+RGB": 0.0}
    for _ in range(10):
        t0 = time.process_time()
        image = Image.open(io.BytesIO(data))
        image.draft(None, reduced_decode_size(*image.size, min_side=image_size))
        t1 = time.process_time()
        image.load()
        t2 = time.process_time()
        image.copy()
        t3 = time.process_time()
        for name, seconds in zip(out, (t1 - t0, t2 - t1, t3 - t2), strict=True):
            out[name] += seconds
    return {name: 100 * total for name, total in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=4, help="decoding threads (decode_shard's default)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--model", default="resnet18")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="bench-embedding-") as tmp:
        root = Path(tmp)
        folder = root / "images"
        dataset_bytes = write_photos(folder, args.n, (args.width, args.height))
        # before any torch work: idle OpenMP threads spinning after inference would count as CPU time here
        steps = profile_decode(sorted(folder.rglob("*.jpg"))[:40], args.image_size)
        check_steps = profile_check_image(sorted(folder.rglob("*.jpg"))[0], args.image_size)
        source = location_from_uri(folder.as_uri())
        cache = location_from_uri((root / "cache").as_uri())
        objects = list_objects(source)
        model = build_model(args.model)

        counter = ByteCounter()
        started, cpu = time.perf_counter(), time.process_time()
        table = decoding.decode_shard(
            source, objects, cache, image_size=args.image_size, counter=counter, workers=args.workers
        )
        decode_s, decode_cpu = time.perf_counter() - started, time.process_time() - cpu
        ok = table[table["verdict"] == "ok"].sort_values(["cache_part", "cache_row"])
        assert len(ok) == args.n, table.loc[table["verdict"] != "ok", ["key", "reason"]]

        started, cpu = time.perf_counter(), time.process_time()
        vectors = embed(
            model,
            decoding.iter_cache(cache, ok),
            total=len(ok),
            batch_size=args.batch_size,
            device=torch.device("cpu"),
        )
        embed_s, embed_cpu = time.perf_counter() - started, time.process_time() - cpu
        assert vectors.shape[0] == args.n

        images = np.concatenate(list(decoding.iter_cache(cache, ok)))
        model_s, model_cpu = model_only(build_model(args.model), images, args.batch_size)

    n = args.n
    e2e_rate = n / (decode_s + embed_s)
    model_rate = n / model_s
    print(
        f"{n} JPEGs {args.width}x{args.height}, {dataset_bytes / n / 1024:.0f} KiB each; {args.model} at "
        f"{args.image_size}px, batch {args.batch_size}, torch threads {torch.get_num_threads()}, "
        f"decode workers {args.workers}"
    )
    ms = 1000 / n
    print("                         wall s     img/s   CPU ms/img")
    print(
        f"  decode pass           {decode_s:7.2f}  {n / decode_s:8.1f}  {decode_cpu * ms:8.1f}"
        f"  (read {counter.total:,} bytes)"
    )
    print(f"  embed from cache      {embed_s:7.2f}  {n / embed_s:8.1f}  {embed_cpu * ms:8.1f}")
    e2e_cpu = (decode_cpu + embed_cpu) * ms
    print(f"  end-to-end            {decode_s + embed_s:7.2f}  {e2e_rate:8.1f}  {e2e_cpu:8.1f}")
    print(f"  model only (memory)   {model_s:7.2f}  {model_rate:8.1f}  {model_cpu * ms:8.1f}")
    print(
        f"  ratio end-to-end / model only: {e2e_rate / model_rate:.2f} wall, "
        f"{model_cpu / (decode_cpu + embed_cpu):.2f} by CPU time (goal >= 0.80)"
    )
    print(f"  embed-from-cache overhead vs model only: {embed_s / model_s - 1:+.0%}")
    whole = steps.pop("decode_object")
    print(
        "  decoding pass per image, single thread (CPU ms): "
        + ", ".join(f"{k} {v:.2f}" for k, v in steps.items())
        + f"; sum {sum(steps.values()):.2f}; decode_object {whole:.2f} (without read)"
    )
    print("  inside check_image (CPU ms): " + ", ".join(f"{k} {v:.2f}" for k, v in check_steps.items()))


if __name__ == "__main__":
    main()
