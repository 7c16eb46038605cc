"""Pretagging: a detection or classification model's predictions for the run's samples, in Lightly's format.

Two kinds of model, both read through the artifacts connection (never a model hub):

* a torchvision architecture name (``fasterrcnn_mobilenet_v3_large_320_fpn``, ``ssdlite320_mobilenet_v3_large``,
  ``retinanet_resnet50_fpn``, ... or a classification architecture such as ``resnet50``) with ``weights``: a
  ``torch.save``'d ``state_dict`` of that architecture, or ``{"state_dict": ..., "categories": [names]}``. The
  number of classes is read from the weights' shapes;
* a TorchScript file (``torch.jit.save``) following torchvision's conventions: a detection model takes a list of
  (3, H, W) float tensors in [0, 1] and returns, per image, ``{"boxes": (N, 4) x1 y1 x2 y2 in input pixels,
  "scores": (N,), "labels": (N,) category ids}`` (a scripted torchvision detector's ``(losses, detections)``
  is accepted too); a classification model takes a (B, 3, S, S) ImageNet-normalised batch and returns (B, C)
  logits in category-id order. Its categories come from ``pretagging_config.categories`` or from a Lightly
  ``schema.json`` stored in the file (``torch.jit.save(m, f, _extra_files={"schema.json": ...})``).

Category names, in order of precedence: ``pretagging_config.categories``; the weights' or TorchScript file's own;
torchvision's bundled names (COCO, ImageNet) when the class count matches one of the architecture's weight sets
(read from the installed package, nothing is downloaded); else ``class_<id>``.

**Resolution.** Pretagging reads the run's decoded cache, never the datasource, so the run still reads each object
about once. The cache holds every sample as an ``embedding.image_size`` square (default 224 px; the whole image
resized, not cropped). Detection first restores each image's aspect ratio (short side ``image_size``, long side
up to 4x that) and then runs at the model's own input size: torchvision detectors rescale internally (short side
320 for the ``*_320_*`` models, 800 for the ResNet-50 FPN ones, a fixed 320x320 for SSDlite), so their input is an
upscaled ``image_size`` image. Objects smaller than a few pixels at that size are missed; raise
``embedding.image_size`` (up to 1024, the cache grows with its square) when small objects matter. Boxes are mapped
back to the original image's pixels (``width``/``height`` from the decoding pass). Classification runs on the
square itself, as the embedding does.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torchvision
from torch import nn

from lightly_tasks.config import ConfigError, PretaggingConfig
from lightly_tasks.embedding import IMAGENET_MEAN, IMAGENET_STD, default_device, prefetch, rebatch
from lightly_tasks.predictions import Prediction, PredictionFormatError, PredictionSchema, parse_schema
from lightly_tasks.progress import Progress

log = logging.getLogger(__name__)

MAX_ASPECT = 4.0
"""Detection inputs keep their aspect ratio up to this long/short side ratio."""
SCHEMA_EXTRA_FILE = "schema.json"


class PretaggingModelError(ValueError):
    """A model or weights file cannot be used for pretagging, or the model's output breaks the contract."""


@dataclass(frozen=True)
class PretaggingModel:
    """A loaded model in eval mode, the schema its outputs are written with, and where it came from."""

    module: nn.Module
    schema: PredictionSchema
    source: str


def is_model_uri(model: str) -> bool:
    """True when ``pretagging_config.model`` names a TorchScript file rather than a torchvision architecture."""
    return "://" in model


def detection_architectures() -> list[str]:
    return torchvision.models.list_models(module=torchvision.models.detection)


def classification_architectures() -> list[str]:
    return torchvision.models.list_models(module=torchvision.models)


def load_pretagging_model(config: PretaggingConfig, read: Callable[[str], bytes]) -> PretaggingModel:
    """Load the model that ``config`` names; ``read(uri)`` fetches a model or weights file through storage."""
    names = _category_list(config.categories)
    if is_model_uri(config.model):
        return load_torchscript(read(config.model), task_type=config.task_type, categories=names)
    if not config.weights:
        raise ConfigError(
            f"pretagging_config.weights: {config.model!r} needs a weights URI (a torch.save'd state_dict); "
            "no weights are downloaded at run time"
        )
    return load_torchvision(config.model, read(config.weights), task_type=config.task_type, categories=names)


def _category_list(categories: Sequence[str] | None) -> list[str] | None:
    if not categories:
        return None
    if any(not name for name in categories):
        raise ConfigError("pretagging_config.categories: category names must not be empty")
    return list(categories)


def load_torchscript(data: bytes, *, task_type: str, categories: Sequence[str] | None = None) -> PretaggingModel:
    """A TorchScript model (bytes of a ``torch.jit.save`` file) and its schema."""
    extra = {SCHEMA_EXTRA_FILE: ""}
    try:
        module = torch.jit.load(io.BytesIO(data), map_location="cpu", _extra_files=extra)
    except Exception as exc:
        raise PretaggingModelError(f"pretagging model is not a loadable TorchScript file: {exc}") from exc
    if categories:
        schema = PredictionSchema.from_names(task_type, categories)
    elif extra[SCHEMA_EXTRA_FILE]:
        try:
            obj = json.loads(extra[SCHEMA_EXTRA_FILE])
            schema = parse_schema(obj, where="the TorchScript file's schema.json")
        except (json.JSONDecodeError, PredictionFormatError) as exc:
            raise PretaggingModelError(f"pretagging model: {exc}") from exc
        if schema.task_type != task_type:
            raise PretaggingModelError(
                f"pretagging model: its schema.json says task_type {schema.task_type!r} but "
                f"pretagging_config.task_type is {task_type!r}"
            )
    else:
        raise ConfigError(
            "pretagging_config.categories: a TorchScript model needs its category names, in this key or in a "
            "schema.json stored in the file (torch.jit.save(model, f, _extra_files={'schema.json': ...}))"
        )
    return PretaggingModel(module.eval(), schema, "torchscript")


def _build(arch: str, num_classes: int, *, detection: bool) -> nn.Module:
    kwargs: dict[str, Any] = {"weights": None, "num_classes": num_classes}
    if detection:
        kwargs["weights_backbone"] = None  # the default would download ImageNet backbone weights
    return torchvision.models.get_model(arch, **kwargs)


def _infer_num_classes(arch: str, state: dict[str, Any], *, detection: bool) -> int:
    """The class count that gives ``state``'s head shapes: parameter sizes grow linearly with it."""
    with torch.device("meta"):
        one = _build(arch, 1, detection=detection).state_dict()
        two = _build(arch, 2, detection=detection).state_dict()
    for key, tensor in one.items():
        per_class = two[key].numel() - tensor.numel()
        if per_class and key in state and hasattr(state[key], "numel"):
            extra = state[key].numel() - tensor.numel()
            if extra % per_class or extra < 0:
                break
            return 1 + extra // per_class
    raise PretaggingModelError(
        f"pretagging_config.weights do not fit {arch}: cannot find its classification head's weights in them"
    )


def _bundled_categories(arch: str, num_classes: int) -> list[str] | None:
    """torchvision's category names for ``arch`` (from the installed package) if one weight set has that count."""
    try:
        enum = torchvision.models.get_model_weights(arch)
    except ValueError:
        return None
    for weights in enum:
        names = weights.meta.get("categories")
        if names and len(names) == num_classes:
            return list(names)
    return None


def load_torchvision(
    arch: str, weights: bytes, *, task_type: str, categories: Sequence[str] | None = None
) -> PretaggingModel:
    """A torchvision ``arch`` with ``weights`` (a serialized state_dict, optionally with its categories)."""
    detection = arch in detection_architectures()
    if not detection and arch not in classification_architectures():
        raise ConfigError(
            f"pretagging_config.model: {arch!r} is neither a URI nor a torchvision detection or classification "
            f"architecture (detection: {', '.join(detection_architectures())})"
        )
    if detection != (task_type == "object-detection"):
        kind = "a detection" if detection else "a classification"
        raise ConfigError(f"pretagging_config.task_type: {arch} is {kind} architecture; got {task_type!r}")
    try:
        state = torch.load(io.BytesIO(weights), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise PretaggingModelError(f"pretagging_config.weights: not a loadable torch state_dict: {exc}") from exc
    own_names = None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        own_names = state.get("categories")
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise PretaggingModelError("pretagging_config.weights: not a state_dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    num_classes = _infer_num_classes(arch, state, detection=detection)
    names = list(categories or own_names or _bundled_categories(arch, num_classes) or [])
    if not names:
        log.warning("pretagging: no category names for %s with %d classes; using class_<id>", arch, num_classes)
        names = [f"class_{i}" for i in range(num_classes)]
    if len(names) != num_classes:
        raise ConfigError(
            f"pretagging_config.categories: {len(names)} names for a model with {num_classes} classes"
            + (" (torchvision detectors count the background as class 0)" if detection else "")
        )
    with torch.random.fork_rng(devices=[]):
        model = _build(arch, num_classes, detection=detection)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise PretaggingModelError(f"pretagging_config.weights do not fit {arch}: {exc}") from exc
    return PretaggingModel(model.eval(), PredictionSchema.from_names(task_type, names), f"torchvision:{arch}")


def _aspect_size(side: int, width: int, height: int) -> tuple[int, int]:
    """(h, w) with the short side ``side`` and the original aspect ratio (at most MAX_ASPECT)."""
    ratio = min(max(width, height) / max(min(width, height), 1), MAX_ASPECT)
    long = round(side * ratio)
    return (side, long) if width >= height else (long, side)


def _call(model: PretaggingModel, inputs: Any, n: int) -> Any:
    """The model's output for one batch; a model that fails on its input is reported as breaking the contract."""
    try:
        return model.module(inputs)
    except torch.cuda.OutOfMemoryError:
        raise
    except Exception as exc:
        raise PretaggingModelError(
            f"{model.schema.task_type} model failed on a batch of {n} images (see pretagging.py for the input it "
            f"gets): {type(exc).__name__}: {exc}"
        ) from exc


def _detections(output: Any, n: int) -> list[dict[str, torch.Tensor]]:
    if isinstance(output, tuple) and len(output) == 2 and isinstance(output[1], list):
        output = output[1]  # a scripted torchvision detector returns (losses, detections)
    if (
        not isinstance(output, list)
        or len(output) != n
        or not all(isinstance(o, dict) and {"boxes", "scores", "labels"} <= set(o) for o in output)
    ):
        raise PretaggingModelError(
            "detection model output must be one {'boxes', 'scores', 'labels'} dict per input image "
            "(torchvision's detection format)"
        )
    return output


def _detect(
    model: PretaggingModel,
    batch: np.ndarray,
    sizes: Sequence[tuple[int, int]],
    *,
    device: torch.device,
    score_threshold: float,
) -> list[list[Prediction]]:
    side = batch.shape[1]
    images, scales = [], []
    for thumb, (width, height) in zip(batch, sizes, strict=True):
        x = torch.from_numpy(thumb).to(device).permute(2, 0, 1).float().div_(255.0)
        h, w = _aspect_size(side, width, height)
        if (h, w) != (side, side):
            x = nn.functional.interpolate(x[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        images.append(x)
        scales.append((width / w, height / h, width, height))
    outputs = _detections(_call(model, images, len(images)), len(images))
    ids = model.schema.ids
    result: list[list[Prediction]] = []
    for out, (sx, sy, width, height) in zip(outputs, scales, strict=True):
        boxes = out["boxes"].float().cpu().numpy().reshape(-1, 4)
        scores = out["scores"].float().cpu().numpy().reshape(-1)
        labels = out["labels"].cpu().numpy().reshape(-1)
        preds: list[Prediction] = []
        for (x1, y1, x2, y2), score, label in zip(boxes, scores, labels, strict=True):
            if score < score_threshold:
                continue
            if int(label) not in ids:
                raise PretaggingModelError(
                    f"detection model predicted label {int(label)}, which is not a category id "
                    f"({min(ids)}..{max(ids)}); check pretagging_config.categories"
                )
            left, right = np.clip([x1 * sx, x2 * sx], 0, width)
            top, bottom = np.clip([y1 * sy, y2 * sy], 0, height)
            preds.append(
                {
                    "category_id": int(label),
                    "bbox": [round(float(v), 1) for v in (left, top, right - left, bottom - top)],
                    "score": round(min(max(float(score), 0.0), 1.0), 5),
                }
            )
        result.append(preds)
    return result


def _classify(model: PretaggingModel, batch: np.ndarray, *, device: torch.device) -> list[list[Prediction]]:
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    x = torch.from_numpy(batch).to(device).permute(0, 3, 1, 2).float().div_(255.0)
    logits = _call(model, (x - mean) / std, len(batch))
    ids = sorted(model.schema.ids)
    if not isinstance(logits, torch.Tensor) or logits.shape != (len(batch), len(ids)):
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise PretaggingModelError(
            f"classification model output must be ({len(batch)}, {len(ids)}) logits, one per category; got {shape}"
        )
    probabilities = torch.softmax(logits.float(), dim=1).cpu().numpy()
    return [
        [{"category_id": ids[int(row.argmax())], "probabilities": [round(float(p), 6) for p in row]}]
        for row in probabilities
    ]


@dataclass(frozen=True)
class PretagResult:
    predictions: list[list[Prediction]]
    device: str
    images_per_second: float | None


@torch.inference_mode()
def pretag(
    model: PretaggingModel,
    parts: Iterable[np.ndarray],
    sizes: Sequence[tuple[int, int]],
    *,
    batch_size: int = 16,
    score_threshold: float = 0.5,
    device: torch.device | None = None,
) -> PretagResult:
    """Predictions for cached images given as a stream of (n, S, S, 3) uint8 arrays, one list per image.

    ``sizes`` are the originals' (width, height), in the same order: detection boxes are returned in those
    pixels. Detections scoring below ``score_threshold`` are dropped; classification keeps its one prediction.
    """
    device = device or default_device()
    module = model.module.to(device).eval()
    loaded = PretaggingModel(module, model.schema, model.source)
    progress = Progress("pretagging", len(sizes), unit="images")
    started = time.monotonic()
    results: list[list[Prediction]] = []
    for batch in prefetch(rebatch(parts, batch_size)):
        if len(results) + len(batch) > len(sizes):
            raise RuntimeError(f"the cache holds more images than the {len(sizes)} sizes given")
        if model.schema.task_type == "object-detection":
            batch_sizes = sizes[len(results) : len(results) + len(batch)]
            results.extend(
                _detect(loaded, batch, batch_sizes, device=device, score_threshold=score_threshold)
            )
        else:
            results.extend(_classify(loaded, batch, device=device))
        progress.update(len(batch))
    progress.finish()
    if len(results) != len(sizes):
        raise RuntimeError(f"pretagged {len(results)} images, expected {len(sizes)}")
    seconds = time.monotonic() - started
    return PretagResult(results, device.type, round(len(results) / seconds, 2) if seconds and results else None)
