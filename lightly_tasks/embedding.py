"""Batched, deterministic image embeddings with a torchvision backbone.

Input batches come from the decoded cache as (B, S, S, 3) uint8 arrays; output rows are L2-normalised float32
vectors (B, D). A background thread loads the next cache part while the model runs on the current batch.
"""

from __future__ import annotations

import io
import logging
import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
import torchvision
from torch import nn

from lightly_tasks.progress import Progress

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RANDOM_INIT_SEED = 0


class CheckpointError(ValueError):
    """A checkpoint does not fit the chosen architecture."""


def default_device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _strip_head(model: nn.Module) -> nn.Module:
    """Replace the classification head by identity so the model outputs its pooled features.

    ConvNeXt's classifier starts with the LayerNorm that normalises its pooled features: only its final
    Linear goes (features stay 768-d, and a checkpoint's ``classifier.0`` weights are loaded, not dropped).
    """
    if hasattr(model, "fc"):
        model.fc = nn.Identity()
    elif isinstance(model, torchvision.models.ConvNeXt):
        model.classifier[-1] = nn.Identity()
    elif hasattr(model, "classifier"):
        model.classifier = nn.Flatten()
    else:  # pragma: no cover - every architecture in config.EMBEDDING_MODELS has one of the two
        raise ValueError(f"do not know how to remove the head of {type(model).__name__}")
    return model


def build_model(name: str, checkpoint: bytes | None = None) -> nn.Module:
    """A torchvision ``name`` backbone in eval mode, without its head.

    Without ``checkpoint`` the weights are a fixed-seed random initialisation (deterministic across runs).
    ``checkpoint`` is a serialized ``state_dict`` (``torch.save``) of the full model or of the backbone, keys
    optionally prefixed by ``backbone.`` or ``module.``; keys of the removed head are ignored.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        model = torchvision.models.get_model(name, weights=None)
    model = _strip_head(model)
    if checkpoint is not None:
        try:
            state = torch.load(io.BytesIO(checkpoint), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CheckpointError(f"checkpoint is not a loadable torch state_dict: {exc}") from exc
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise CheckpointError("checkpoint is not a state_dict")
        cleaned = {}
        for key, value in state.items():
            for prefix in ("module.", "backbone."):
                if key.startswith(prefix):
                    key = key[len(prefix) :]
            cleaned[key] = value
        own = model.state_dict()
        head = {k for k in cleaned if k not in own and k.split(".")[0] in ("fc", "classifier")}
        missing = sorted(set(own) - set(cleaned))
        unexpected = sorted(set(cleaned) - set(own) - head)
        if missing or unexpected:
            raise CheckpointError(
                f"checkpoint does not fit {name}: {len(missing)} missing keys (e.g. {missing[:3]}), "
                f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})"
            )
        mismatched = [
            f"{k} {tuple(v.shape)} != {tuple(own[k].shape)}"
            for k, v in cleaned.items()
            if k in own and hasattr(v, "shape") and tuple(v.shape) != tuple(own[k].shape)
        ]
        if mismatched:
            raise CheckpointError(
                f"checkpoint does not fit {name}: {len(mismatched)} tensors of another shape "
                f"(e.g. {mismatched[:3]})"
            )
        model.load_state_dict({k: v for k, v in cleaned.items() if k in own})
    return model.eval()


def rebatch(parts: Iterable[np.ndarray], batch_size: int) -> Iterator[np.ndarray]:
    """Cut a stream of (n, S, S, 3) arrays into (batch_size, S, S, 3) batches (the last may be smaller)."""
    buffer: list[np.ndarray] = []
    held = 0
    for part in parts:
        start = 0
        while start < len(part):
            take = min(batch_size - held, len(part) - start)
            buffer.append(part[start : start + take])
            held += take
            start += take
            if held == batch_size:
                yield np.concatenate(buffer)
                buffer, held = [], 0
    if held:
        yield np.concatenate(buffer)


def prefetch(items: Iterable[np.ndarray], depth: int = 2) -> Iterator[np.ndarray]:
    """Iterate ``items`` on a background thread, ``depth`` ahead, so loading overlaps inference.

    When the consumer stops early (an exception, or it closes this generator), the producer stops too and
    drops what it holds, instead of blocking forever on a full queue.
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
        except BaseException as exc:  # re-raised in the consumer
            put(exc)
            return
        put(done)

    threading.Thread(target=produce, daemon=True, name="cache-prefetch").start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


@torch.inference_mode()
def embed(
    model: nn.Module,
    parts: Iterable[np.ndarray],
    *,
    total: int,
    batch_size: int = 32,
    device: torch.device | None = None,
) -> np.ndarray:
    """Embed ``total`` images given as a stream of (n, S, S, 3) uint8 arrays; returns (total, D) float32.

    Rows are L2-normalised. On CUDA the batch runs in float16 autocast; on CPU in float32.
    """
    device = device or default_device()
    model = model.to(device).eval()
    if device.type == "cpu":
        model = model.to(memory_format=torch.channels_last)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    progress = Progress("embedding", total, unit="images")
    outputs: list[np.ndarray] = []
    for batch in prefetch(rebatch(parts, batch_size)):
        x = torch.from_numpy(batch).to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
        x = ((x - mean) / std).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=device.type == "cuda"):
            features = model(x)
        features = torch.nn.functional.normalize(features.float().flatten(1), dim=1)
        outputs.append(features.cpu().numpy())
        progress.update(len(batch))
    progress.finish()
    if not outputs:
        if total:
            raise RuntimeError(f"embedded 0 images, expected {total}")
        return np.zeros((0, 0), dtype=np.float32)
    result = np.concatenate(outputs).astype(np.float32, copy=False)
    if len(result) != total:
        raise RuntimeError(f"embedded {len(result)} images, expected {total}")
    return result
