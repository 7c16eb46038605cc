"""Is self-supervised training worth it? kNN accuracy of random-init vs trained embeddings on labeled digits.

scikit-learn's bundled handwritten digits (:mod:`lightly_tasks.digits`), drawn at random scale and position,
are the unlabeled training set; their labels only score the embeddings: leave-one-out kNN accuracy (k = 5
and k = 1) of the random initialisation and of the trained backbone, both through
:func:`lightly_tasks.embedding.embed` as the embedding stage runs them. Also prints seconds per epoch and
training images per second on this machine (CPU, or CUDA with mixed precision).

    python bench/training.py [--n 1797] [--epochs 30] [--image-size 32] [--method simclr] [--plain]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lightly_tasks.decoding import CachePart
from lightly_tasks.digits import N_DIGITS, load_digits
from lightly_tasks.embedding import build_model, default_device, embed
from lightly_tasks.knn import knn_accuracy
from lightly_tasks.storage import location_from_uri
from lightly_tasks.training import BACKBONE, METHODS, TrainingSettings, train


def _accuracies(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    vectors = embed(model, [images], total=len(images), batch_size=256)
    return {f"knn{k}": round(knn_accuracy(vectors, labels, k=k), 4) for k in (5, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--n", type=int, default=N_DIGITS, help="number of digits (at most 1797)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=TrainingSettings.lr)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--method", choices=METHODS, default="simclr")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--plain", action="store_true", help="centred grey digits instead of the varied ones")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    images, labels = load_digits(args.image_size, n=args.n, varied=not args.plain)
    parts = [CachePart(len(images[i : i + 256]), lambda i=i: images[i : i + 256]) for i in range(0, len(images), 256)]
    random_init = _accuracies(build_model(args.model), images, labels)
    settings = TrainingSettings(
        model=args.model,
        method=args.method,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        image_size=args.image_size,
    )
    with tempfile.TemporaryDirectory() as out:
        started = time.monotonic()
        result = train(settings, parts, location_from_uri(Path(out).as_uri()))
        seconds = time.monotonic() - started
        trained = _accuracies(build_model(args.model, (Path(out) / BACKBONE).read_bytes()), images, labels)
    figures = {
        "data": f"{len(images)} {'plain' if args.plain else 'varied'} digits, {args.image_size} px",
        "model": args.model,
        "method": args.method,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "device": str(default_device()),
        "threads": torch.get_num_threads(),
        "random_init": random_init,
        "trained": trained,
        "gain_knn5": round(trained["knn5"] - random_init["knn5"], 4),
        "training_seconds": round(seconds, 1),
        "seconds_per_epoch": round(float(np.mean(result.epoch_seconds)), 2),
        "images_per_second": result.images_per_second,
        "loss_first_last": [result.loss_per_epoch[0], result.loss_per_epoch[-1]],
    }
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
