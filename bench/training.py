"""Is self-supervised training worth it? kNN accuracy of random-init vs trained embeddings on labeled digits.

scikit-learn's bundled handwritten digits (:mod:`lightly_tasks.digits`), drawn at random scale and position,
are the unlabeled training set; their labels only score the embeddings, both made by
:func:`lightly_tasks.embedding.embed` as the embedding stage makes them:

* ``loo``: leave-one-out kNN accuracy over all digits (what curation does: it trains on the images it embeds);
* ``held-out``: the model trains on the first ``1 - --holdout`` of the digits only; the remaining digits are
  kNN-classified against the training digits' embeddings (images the model never saw).

Prints a table (k = 5 and k = 1) for the random init and the trained backbone of the same architecture, then
epochs, seconds per epoch, training images per second and the loss of every epoch on this machine (CPU, or
CUDA with mixed precision).

    python bench/training.py [--n 1797] [--epochs 10] [--image-size 32] [--lr 3e-4] [--plain]
"""

from __future__ import annotations

import argparse
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


def _accuracies(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray, n_train: int) -> dict[str, float]:
    """LOO accuracy over all images and held-out accuracy of images[n_train:] against images[:n_train]."""
    vectors = embed(model, [images], total=len(images), batch_size=256)
    figures = {}
    for k in (5, 1):
        figures[f"loo knn{k}"] = knn_accuracy(vectors, labels, k=k)
        figures[f"held-out knn{k}"] = knn_accuracy(
            vectors[:n_train], labels[:n_train], k=k, queries=vectors[n_train:], query_labels=labels[n_train:]
        )
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--n", type=int, default=N_DIGITS, help="number of digits (at most 1797)")
    parser.add_argument("--holdout", type=float, default=0.25, help="fraction of the digits never trained on")
    parser.add_argument("--epochs", type=int, default=30, help="30: a clear gain; the 10 of a default run is marginal")
    parser.add_argument("--batch-size", type=int, default=TrainingSettings.batch_size)
    parser.add_argument("--lr", type=float, default=TrainingSettings.lr)
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--method", choices=METHODS, default="simclr")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--plain", action="store_true", help="centred grey digits instead of the varied ones")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    images, labels = load_digits(args.image_size, n=args.n, varied=not args.plain)
    n_train = round(len(images) * (1.0 - args.holdout))
    seen = images[:n_train]
    parts = [CachePart(len(seen[i : i + 256]), lambda i=i: seen[i : i + 256]) for i in range(0, n_train, 256)]
    random_init = _accuracies(build_model(args.model), images, labels, n_train)
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
        trained = _accuracies(build_model(args.model, (Path(out) / BACKBONE).read_bytes()), images, labels, n_train)

    kind = "plain" if args.plain else "varied"
    print(
        f"{len(images)} {kind} digits at {args.image_size} px ({n_train} trained on, {len(images) - n_train} "
        f"held out), {args.model}, {args.method}, batch {args.batch_size}, lr {args.lr:g}, "
        f"{default_device()} ({torch.get_num_threads()} threads)"
    )
    print(f"{'kNN accuracy':<16}{'random init':>12}{'trained':>10}{'gain':>8}")
    for name in random_init:
        print(f"{name:<16}{random_init[name]:>12.3f}{trained[name]:>10.3f}{trained[name] - random_init[name]:>+8.3f}")
    print(
        f"epochs {args.epochs}, training {seconds:.0f} s, {np.mean(result.epoch_seconds):.1f} s/epoch, "
        f"{result.images_per_second} images/s"
    )
    print("loss per epoch: " + " ".join(f"{loss:.3f}" for loss in result.loss_per_epoch))
    return 0


if __name__ == "__main__":
    sys.exit(main())
