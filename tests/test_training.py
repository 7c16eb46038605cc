"""Self-supervised training: batched views, shuffled batches, resumable checkpoints, the pipeline stage, and
the measured claim that training beats the random initialisation on real labeled images (digits)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from lightly_tasks import artifacts, pipeline
from lightly_tasks.augment import random_views
from lightly_tasks.config import parse_config
from lightly_tasks.decoding import CachePart
from lightly_tasks.digits import load_digits, write_digits_folder
from lightly_tasks.embedding import build_model, embed
from lightly_tasks.knn import knn_accuracy
from lightly_tasks.storage import location_from_uri
from lightly_tasks.training import (
    BACKBONE,
    CHECKPOINT,
    TrainingSettings,
    _use_center_tap_convs,
    build_method,
    shuffled_batches,
    train,
)


def _parts(images: np.ndarray, size: int = 16) -> list[CachePart]:
    return [CachePart(len(images[i : i + size]), lambda i=i: images[i : i + size]) for i in range(0, len(images), size)]


def test_random_views_are_per_sample_seeded_and_normalised() -> None:
    images = torch.from_numpy(load_digits(32, n=8)[0])
    a = random_views(images, 24, torch.Generator().manual_seed(1))
    b = random_views(images, 24, torch.Generator().manual_seed(1))
    c = random_views(images, 24, torch.Generator().manual_seed(2))
    assert a.shape == (8, 3, 24, 24) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert not torch.allclose(a[0], a[1])
    assert -2.2 < float(a.min()) and float(a.max()) < 2.7  # ImageNet-normalised [0, 1] pixels


@pytest.mark.parametrize("stride", [1, 2])
def test_center_tap_convolution_matches_conv2d_values_and_gradients(stride: int) -> None:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(8, 4, 3, stride=stride, padding=1, bias=False)
    fast = _use_center_tap_convs(torch.nn.Sequential(copy.deepcopy(conv)))[0]
    assert type(fast) is not torch.nn.Conv2d and fast.state_dict().keys() == conv.state_dict().keys()
    for side in (1, 3):
        x = torch.randn(5, 8, side, side)
        ours, reference = fast(x), conv(x)
        torch.testing.assert_close(ours, reference)
        ours.square().sum().backward()
        reference.square().sum().backward()
        torch.testing.assert_close(fast.weight.grad, conv.weight.grad)
        fast.zero_grad()
        conv.zero_grad()


def test_training_keeps_the_backbone_batch_norm_statistics(tmp_path: Path) -> None:
    method = build_method(TrainingSettings()).train()
    assert not method.backbone.bn1.training and method.projection.training
    images = load_digits(16, n=32)[0]
    settings = TrainingSettings(epochs=1, batch_size=16, image_size=16)
    train(settings, _parts(images), location_from_uri(tmp_path.as_uri()))
    trained = build_model("resnet18", (tmp_path / BACKBONE).read_bytes())
    initial = build_model("resnet18")
    torch.testing.assert_close(trained.bn1.running_var, initial.bn1.running_var)
    assert not torch.equal(trained.conv1.weight, initial.conv1.weight)


def test_shuffled_batches_cover_distinct_images_in_random_order() -> None:
    ids = np.arange(100, dtype=np.uint8)
    images = np.broadcast_to(ids[:, None, None, None], (100, 2, 2, 3)).copy()

    def epoch() -> list[np.ndarray]:
        return list(shuffled_batches(_parts(images, 7), 16, np.random.default_rng(0)))

    batches = epoch()
    assert [len(b) for b in batches] == [16] * 6  # 100 // 16 full batches; the partial one is dropped
    seen = np.concatenate([b[:, 0, 0, 0] for b in batches])
    assert len(set(seen.tolist())) == 96
    assert not np.array_equal(seen, np.sort(seen))
    assert np.array_equal(seen, np.concatenate([b[:, 0, 0, 0] for b in epoch()]))  # same seed, same order
    small = list(shuffled_batches(_parts(images[:5]), 16, np.random.default_rng(0)))
    assert [len(b) for b in small] == [5]


def test_training_resumes_after_a_worker_dies_mid_epoch(tmp_path: Path) -> None:
    images = load_digits(32, n=48)[0]
    settings = TrainingSettings(epochs=2, batch_size=16, image_size=32)
    out = location_from_uri(tmp_path.as_uri())
    loads = 0

    def part(i: int) -> np.ndarray:
        nonlocal loads
        loads += 1
        if loads > 12 + 8:  # 12 parts of 4; epoch 2 dies loading its second pool, after 2 of its 3 steps
            raise MemoryError("worker killed")
        return images[i : i + 4]

    dying = [CachePart(4, lambda i=i: part(i)) for i in range(0, 48, 4)]
    with pytest.raises(MemoryError):
        train(settings, dying, out, device=torch.device("cpu"))
    first = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert len(first["loss_per_epoch"]) == 1 and "optimizer" in first and not (tmp_path / BACKBONE).exists()

    retried = train(settings, _parts(images, 48), out, device=torch.device("cpu"))
    assert retried.resumed_from_epoch == 1 and retried.epochs_trained == 1
    assert retried.loss_per_epoch[0] == first["loss_per_epoch"][0]
    assert len(retried.loss_per_epoch) == 2
    assert (tmp_path / BACKBONE).exists()


def _context(root: Path, images_dir: Path, **conf: object) -> pipeline.RunContext:
    config = parse_config(
        {
            "datasource": {"uri": images_dir.as_uri()},
            "dataset": "digits",
            "artifacts_root": (root / "artifacts").as_uri(),
            "store_url": f"sqlite:///{root / 'store.db'}",
            "embedding": {"image_size": 32},
            "num_shards": 2,
            **conf,
        }
    )
    return pipeline.RunContext(
        config=config,
        run_id="run-1",
        datasource=location_from_uri(config.datasource.uri),
        artifacts=location_from_uri(config.artifacts_root),
    )


def test_training_stage_trains_on_the_cache_resumes_and_feeds_embedding(tmp_path: Path) -> None:
    images_dir = tmp_path / "images"
    write_digits_folder(images_dir, load_digits(32, n=40)[0])
    (images_dir / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    training = {"epochs": 1, "batch_size": 16, "image_size": 24}
    ctx = _context(tmp_path, images_dir, enable_training=True, training=training)
    listing = pipeline.list_stage(ctx)
    decoded = [pipeline.corruptness_stage(ctx, m["shard"]) for m in pipeline.per_shard(listing)]
    assert sum(m["n_ok"] for m in decoded) == 40 and sum(m["n_corrupt"] for m in decoded) == 1
    images_dir.rename(tmp_path / "gone")  # training must not touch the datasource again

    first = pipeline.training_stage(ctx, listing["shards"])
    assert first["bytes_read"] == 0
    assert (first["n_images"], first["epochs"], first["resumed_from_epoch"]) == (40, 1, 0)
    assert first["backbone_uri"].endswith("/runs/run-1/training/backbone.pt")

    more = _context(tmp_path, images_dir, enable_training=True, training={**training, "epochs": 3})
    resumed = pipeline.training_stage(more, listing["shards"])
    assert (resumed["resumed_from_epoch"], resumed["epochs_trained"], resumed["epochs"]) == (1, 2, 3)
    assert resumed["loss_per_epoch"][0] == first["loss_per_epoch"][0]

    embedded = pipeline.embedding_stage(more, 0)
    assert embedded["checkpoint"] == resumed["backbone_uri"] and embedded["bytes_read"] == 0
    trained = _embeddings(more)

    # a later run names the trained backbone as embedding.checkpoint: build_model loads it, same vectors
    backbone = Path(resumed["backbone_uri"].removeprefix("file://"))
    later = _context(tmp_path, images_dir, embedding={"image_size": 32, "checkpoint": backbone.as_uri()})
    assert pipeline.embedding_stage(later, 0)["checkpoint"] == backbone.as_uri()
    np.testing.assert_allclose(_embeddings(later), trained, atol=1e-5)

    plain = _context(tmp_path, images_dir)
    assert pipeline.embedding_stage(plain, 0)["checkpoint"] is None
    random_init = _embeddings(plain)
    assert random_init.shape == trained.shape and not np.allclose(random_init, trained, atol=1e-3)


def _embeddings(ctx: pipeline.RunContext) -> np.ndarray:
    return artifacts.read_embeddings(ctx.run, "embedding/shard-00000.parquet")[1]


def test_trained_model_beats_random_init_on_digits(tmp_path: Path) -> None:
    """kNN accuracy of resnet18 embeddings on 600 varied digits at 16 px: 10 SimCLR epochs vs the random init.

    Fixed seeds (digits, init, batches, views), yet float summation order still moves the trained figure: measured
    0.47 -> 0.525 with 2 torch threads and 0.47 -> 0.57 with 1 (k = 5), same losses to 2 decimals; hence one
    thread here and a +0.03 bound. ~2 min of training on a busy core. bench/training.py gives the table with a
    held-out split.
    """
    images, labels = load_digits(16, n=600, varied=True)

    def accuracy(model: torch.nn.Module) -> float:
        return knn_accuracy(embed(model, [images], total=len(images), batch_size=300), labels, k=5)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one summation order on every machine: the figure above is reproducible
    try:
        random_init = accuracy(build_model("resnet18"))
        settings = TrainingSettings(epochs=10, batch_size=64, lr=3e-4, image_size=16)
        result = train(settings, _parts(images, 128), location_from_uri(tmp_path.as_uri()), device=torch.device("cpu"))
        trained = accuracy(build_model("resnet18", (tmp_path / BACKBONE).read_bytes()))
    finally:
        torch.set_num_threads(threads)
    assert result.loss_per_epoch[-1] < result.loss_per_epoch[0] - 0.5, result.loss_per_epoch
    assert trained >= random_init + 0.03, (random_init, trained)


def test_stochastic_depth_is_seeded_so_runs_repeat_whatever_the_global_rng(tmp_path: Path) -> None:
    """EfficientNet's stochastic depth draws from torch's global RNG in train mode; training seeds it per epoch."""
    images = load_digits(32, n=16)[0]
    settings = TrainingSettings(model="efficientnet_b0", epochs=1, batch_size=8, image_size=32)
    losses = []
    for global_seed, folder in ((1, "a"), (2, "b")):
        torch.manual_seed(global_seed)
        result = train(
            settings, _parts(images, 8), location_from_uri((tmp_path / folder).as_uri()), device=torch.device("cpu")
        )
        losses.append(result.loss_per_epoch)
    assert losses[0] == losses[1]
