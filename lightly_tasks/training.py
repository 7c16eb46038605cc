"""Self-supervised training (SimCLR) of the embedding backbone on the run's decoded cache.

Data: the cache parts ((n, S, S, 3) uint8) of the non-corrupt samples, visited in a random order per epoch;
``SHUFFLE_BUFFER_PARTS`` parts at a time are pooled and shuffled, so memory stays at that many parts
(8 x 256 x S x S x 3 bytes: 308 MB at S = 224, 25 MB at S = 64) however large the run. Two random views of
each image (:mod:`lightly_tasks.augment`) are cut from the cache at ``image_size`` <= S. Nothing is read from
the datasource.

Output, under the given location: ``checkpoint-last.pt`` after every epoch (method weights incl. heads,
optimizer and AMP scaler state, epoch, loss per epoch) and, at the end, ``backbone.pt``: the backbone's
``state_dict``, which :func:`lightly_tasks.embedding.build_model` loads. A call finding a compatible
checkpoint (same model and method) resumes after its epoch: a retried task loses at most one epoch. Per-epoch
seeds make a resumed run draw the same batches and views as an uninterrupted one.

Budget: disk, ``checkpoint-last.pt`` = weights + heads + AdamW's two moments, 138 MB for resnet18 and 336 MB for
resnet50 (twice that while it is replaced), ``backbone.pt`` 45 / 94 MB; memory, the shuffle buffer above plus
the model's activations for 2 x batch_size views at image_size.

Device: CUDA when present, with bf16 autocast (fp16 + GradScaler on GPUs without bf16); float32 on CPU. The
3x3 convolutions on 1x1 maps run as their centre tap (:class:`_CenterTapConv2d`): 2-3x faster CPU steps at
16-32 px.

What made training beat the random init (kNN on varied digits, ``bench/training.py``): the backbone's batch
norm frozen (:func:`freeze_batch_norm`; with batch statistics the trained model was worse than the random
init after 46 steps, 0.39 vs 0.47), AdamW at 3e-4 (1e-3 and 3e-3 were worse in short runs: 0.44 and 0.25 with
frozen or batch-statistics norm), temperature 0.2, crops of at least 30 % of the image.

SimCLR is the one method: BYOL (lightly's heads and loss, AdamW, momentum 0.99 -> 1) collapsed in the same
schedule (varied digits, 10 epochs: kNN 0.35 vs 0.71 for the random init; measured before batch norm was
frozen) and is left out until it is tuned.
"""

from __future__ import annotations

import io
import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from lightly.loss import NTXentLoss
from lightly.models.modules.heads import SimCLRProjectionHead
from torch import nn

from lightly_tasks import artifacts
from lightly_tasks.augment import random_views
from lightly_tasks.decoding import CachePart
from lightly_tasks.embedding import build_model, default_device
from lightly_tasks.progress import Progress
from lightly_tasks.storage import Location

log = logging.getLogger(__name__)

METHODS = ("simclr",)
CHECKPOINT = "checkpoint-last.pt"
BACKBONE = "backbone.pt"
CHECKPOINT_FORMAT = 1
SHUFFLE_BUFFER_PARTS = 8
WEIGHT_DECAY = 1e-4
WARMUP_FRACTION = 0.1
CHANNELS_LAST = torch.channels_last
"""Memory format of model and views: oneDNN's CPU backward of 3x3 convolutions on 1x1 maps (layer4 at 32 px)
is ~10x slower in the default format."""


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss diverged)."""


@dataclass(frozen=True)
class TrainingSettings:
    """What to train and how; ``lr`` is AdamW's peak learning rate (linear warm-up, then cosine to 0)."""

    model: str = "resnet18"
    method: str = "simclr"
    epochs: int = 10
    batch_size: int = 64
    lr: float = 3e-4
    image_size: int = 64
    seed: int = 0


@dataclass(frozen=True)
class TrainingResult:
    """Loss of every epoch so far (resumed ones included) and the figures of this call."""

    loss_per_epoch: list[float]
    resumed_from_epoch: int
    epochs_trained: int
    n_images: int
    seconds: float
    images_per_second: float | None
    checkpoint_uri: str
    backbone_uri: str
    device: str
    epoch_seconds: list[float] = field(default_factory=list)


def feature_dim(backbone: nn.Module) -> int:
    """Width D of the backbone's pooled (B, D) features, from one dummy forward pass."""
    was_training = backbone.training
    backbone.eval()
    with torch.no_grad():
        dim = backbone(torch.zeros(1, 3, 32, 32)).flatten(1).shape[1]
    backbone.train(was_training)
    return int(dim)


def freeze_batch_norm(backbone: nn.Module) -> None:
    """Put the backbone's batch-norm layers in eval mode: they normalise with their stored statistics (and keep
    them), while their scale and shift still train.

    The embedding stage runs the backbone in eval mode, so training does too: the random init's statistics
    (mean 0, variance 1) or a checkpoint's stay in place, and each step starts from the very function that
    embeds. With batch statistics instead, the statistics that eval mode then uses were the first thing to
    change, and the features got worse before they got better (varied digits at 16 px, 46 steps: kNN 0.39
    against 0.47 for the random init; frozen: 0.52). Frozen batch norm is also the usual way to fine-tune
    from pretrained weights with small batches.
    """
    for module in backbone.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


class SimCLR(nn.Module):
    """Backbone + SimCLR projection head, NT-Xent loss between the two views of each image.

    Temperature 0.2 rather than lightly's default 0.5: it learned faster in the short schedules a curation
    run affords (varied digits, 96 steps: kNN 0.57 vs 0.50).
    """

    def __init__(self, backbone: nn.Module, dim: int, temperature: float = 0.2) -> None:
        super().__init__()
        self.backbone = backbone
        self.projection = SimCLRProjectionHead(dim, dim, 128)
        self.criterion = NTXentLoss(temperature=temperature)

    def train(self, mode: bool = True) -> SimCLR:
        """Train mode, except the backbone's batch-norm layers: see :func:`freeze_batch_norm`."""
        super().train(mode)
        freeze_batch_norm(self.backbone)
        return self

    def loss(self, view_a: torch.Tensor, view_b: torch.Tensor) -> torch.Tensor:
        """Views (B, 3, s, s) -> scalar loss; both views go through the model as one (2B) batch."""
        z = self.projection(self.backbone(torch.cat([view_a, view_b])).flatten(1)).float()
        z_a, z_b = z.chunk(2)
        with torch.autocast(z.device.type, enabled=False):  # the loss's similarities in float32, under AMP too
            return self.criterion(z_a, z_b)


class _CenterTapConv2d(nn.Conv2d):
    """A 3x3, padding-1 convolution that, on a 1x1 map, only multiplies its centre tap (the others see padding).

    Same result and gradients as :class:`~torch.nn.Conv2d`, but CPU backward of the 3x3 kernel on 1x1 maps
    (layer4 of a ResNet at <= 32 px) is pathologically slow in oneDNN: ~1.3 s per call for 128 x 512 channels,
    4x the whole rest of a resnet18 step at 16 px. The centre tap as a 1x1 convolution takes milliseconds.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] == (1, 1) and self.padding == (1, 1) and self.groups == 1 and self.padding_mode == "zeros":
            return nn.functional.conv2d(x, self.weight[:, :, 1:2, 1:2], self.bias)
        return super().forward(x)


def _use_center_tap_convs(backbone: nn.Module) -> nn.Module:
    """Swap the class of every plain 3x3 ``Conv2d`` to :class:`_CenterTapConv2d` (weights and keys unchanged)."""
    for module in backbone.modules():
        if type(module) is nn.Conv2d and module.kernel_size == (3, 3) and module.dilation == (1, 1):
            module.__class__ = _CenterTapConv2d
    return backbone


def build_method(settings: TrainingSettings, init_checkpoint: bytes | None = None) -> SimCLR:
    """The method's model around a ``settings.model`` backbone (random init, or ``init_checkpoint``)."""
    backbone = _use_center_tap_convs(build_model(settings.model, init_checkpoint).train())
    dim = feature_dim(backbone)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        if settings.method == "simclr":
            return SimCLR(backbone, dim)
    raise ValueError(f"unknown training method {settings.method!r}; use one of {', '.join(METHODS)}")


def steps_per_epoch(n_images: int, batch_size: int) -> int:
    """Full batches per epoch (the last partial one is dropped), or 1 when all images fit in one batch."""
    return max(1, n_images // batch_size)


def shuffled_batches(parts: Sequence[CachePart], batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """One epoch of random (B, S, S, 3) uint8 batches from ``parts``: :func:`steps_per_epoch` of them.

    Parts are visited in a random order, ``SHUFFLE_BUFFER_PARTS`` at a time pooled (with the rows left over
    from the previous pool) and shuffled.
    """
    n_images = sum(p.n for p in parts)
    n_steps = steps_per_epoch(n_images, batch_size)
    take = min(batch_size, n_images)
    order = rng.permutation(len(parts))
    pool: np.ndarray | None = None
    done = 0
    for start in range(0, len(order), SHUFFLE_BUFFER_PARTS):
        loaded = [parts[i].load() for i in order[start : start + SHUFFLE_BUFFER_PARTS]]
        pool = np.concatenate(([pool] if pool is not None else []) + loaded)
        pool = pool[rng.permutation(len(pool))]
        used = 0
        while len(pool) - used >= take and done < n_steps:
            yield pool[used : used + take]
            used, done = used + take, done + 1
        pool = pool[used:]


def learning_rate(step: int, total_steps: int, peak: float) -> float:
    """Linear warm-up over the first ``WARMUP_FRACTION`` of the steps, then cosine decay to 0."""
    warmup = max(1, int(total_steps * WARMUP_FRACTION))
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return peak * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def _amp_dtype(device: torch.device) -> torch.dtype | None:
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _save(out: Location, name: str, obj: object) -> str:
    """``torch.save`` to ``name`` below ``out`` via a temporary name, so a crash never leaves half a file."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    temporary = f"{name}.tmp"
    artifacts.write_bytes(out, temporary, buffer.getvalue())
    out.fs.mv(out.path(temporary), out.path(name))
    return out.child_uri(name)


def _load_checkpoint(out: Location, settings: TrainingSettings) -> dict | None:
    """The last epoch checkpoint under ``out`` if there is one for the same model and method."""
    path = out.path(CHECKPOINT)
    if not out.fs.exists(path):
        return None
    try:
        with out.fs.open(path, "rb") as f:
            state = torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged file must not block the retry that would replace it
        log.warning("ignoring unreadable checkpoint %s (%s); training from the start", out.child_uri(CHECKPOINT), exc)
        return None
    theirs = (state.get("format"), state.get("model"), state.get("method"))
    if theirs != (CHECKPOINT_FORMAT, settings.model, settings.method):
        log.warning(
            "checkpoint %s is for %s; training %s/%s from the start",
            out.child_uri(CHECKPOINT),
            theirs,
            settings.model,
            settings.method,
        )
        return None
    return state


def train(
    settings: TrainingSettings,
    parts: Sequence[CachePart],
    out: Location,
    *,
    init_checkpoint: bytes | None = None,
    device: torch.device | None = None,
) -> TrainingResult:
    """Train ``settings.epochs`` epochs on ``parts``, resuming from ``out``'s checkpoint."""
    started = time.monotonic()
    device = device or default_device()
    n_images = sum(p.n for p in parts)
    method = build_method(settings, init_checkpoint)
    state = _load_checkpoint(out, settings)
    if state is not None:
        method.load_state_dict(state["state_dict"])
    method = method.to(device, memory_format=CHANNELS_LAST).train()
    optimizer = torch.optim.AdamW(
        [p for p in method.parameters() if p.requires_grad], lr=settings.lr, weight_decay=WEIGHT_DECAY
    )
    amp_dtype = _amp_dtype(device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    losses: list[float] = []
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])  # after .to(device): its state follows the parameters
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        losses = list(state["loss_per_epoch"])
        log.info(
            "resuming training after epoch %d of %d from %s", len(losses), settings.epochs, out.child_uri(CHECKPOINT)
        )
    resumed_from = len(losses)
    n_steps = steps_per_epoch(n_images, settings.batch_size)
    total_steps = n_steps * settings.epochs
    epoch_seconds: list[float] = []
    if n_images < 2:
        log.warning("training needs at least 2 images, the run has %d: the backbone keeps its weights", n_images)
    for epoch in range(resumed_from, settings.epochs if n_images >= 2 else resumed_from):
        epoch_started = time.monotonic()
        rng = np.random.default_rng([settings.seed, epoch])
        generator = torch.Generator().manual_seed(settings.seed * 1_000_003 + epoch)
        progress = Progress(f"training epoch {epoch + 1}/{settings.epochs}", n_images, unit="images")
        batch_losses: list[torch.Tensor] = []
        # Layers that draw from the global RNG in train mode (stochastic depth of EfficientNet and ConvNeXt,
        # dropout) get a per-epoch seed too, so a resumed run trains exactly as an uninterrupted one.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(settings.seed * 1_000_003 + epoch)
            for i, batch in enumerate(shuffled_batches(parts, settings.batch_size, rng)):
                step = epoch * n_steps + i
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(step, total_steps, settings.lr)
                images = torch.from_numpy(batch).to(device, non_blocking=True)
                view_a, view_b = (
                    random_views(images, settings.image_size, generator).contiguous(memory_format=CHANNELS_LAST)
                    for _ in range(2)
                )
                with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                    loss = method.loss(view_a, view_b)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                batch_losses.append(loss.detach())
                progress.update(len(batch))
        epoch_loss = float(torch.stack(batch_losses).mean())
        if not math.isfinite(epoch_loss):
            raise TrainingError(f"loss is {epoch_loss} in epoch {epoch + 1}: lower training.lr")
        losses.append(round(epoch_loss, 6))
        epoch_seconds.append(time.monotonic() - epoch_started)
        _save(
            out,
            CHECKPOINT,
            {
                "format": CHECKPOINT_FORMAT,
                "model": settings.model,
                "method": settings.method,
                "image_size": settings.image_size,
                "loss_per_epoch": losses,
                "state_dict": method.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict() if scaler.is_enabled() else None,
            },
        )
        log.info(
            "training epoch %d/%d: loss %.4f, %.1f s, %.0f images/s",
            epoch + 1,
            settings.epochs,
            epoch_loss,
            epoch_seconds[-1],
            n_images / epoch_seconds[-1],
        )
    backbone_uri = _save(out, BACKBONE, {k: v.cpu() for k, v in method.backbone.state_dict().items()})
    seconds = time.monotonic() - started
    trained = len(epoch_seconds)
    return TrainingResult(
        loss_per_epoch=losses,
        resumed_from_epoch=resumed_from,
        epochs_trained=trained,
        n_images=n_images,
        seconds=round(seconds, 3),
        images_per_second=round(trained * n_images / sum(epoch_seconds), 2) if trained else None,
        checkpoint_uri=out.child_uri(CHECKPOINT),
        backbone_uri=backbone_uri,
        device=str(device),
        epoch_seconds=[round(s, 3) for s in epoch_seconds],
    )
