"""Tiny, deterministic pretagging models that the tests build and save themselves (no downloads).

* :class:`RedBoxDetector`: torchvision's detection interface; finds the red rectangle in each image (one box,
  label 1, score 0.9) and adds a fixed low-scoring box (label 2, score 0.1) that a threshold must drop.
* :class:`ColourClassifier`: (B, 3, S, S) ImageNet-normalised batch -> logits of the dominant channel
  (categories red, green, blue).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

DETECTOR_CATEGORIES = ["background", "red", "noise"]
CLASSIFIER_CATEGORIES = ["red", "green", "blue"]


class RedBoxDetector(nn.Module):
    def forward(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        out: list[dict[str, Tensor]] = []
        for image in images:
            mask = (image[0] > 0.6) & (image[1] < 0.4) & (image[2] < 0.4)
            points = torch.nonzero(mask)
            noise = torch.tensor([[0.0, 0.0, 2.0, 2.0]], device=image.device)
            if points.shape[0] == 0:
                boxes = noise
                scores = torch.tensor([0.1], device=image.device)
                labels = torch.tensor([2], device=image.device)
            else:
                ys, xs = points[:, 0], points[:, 1]
                box = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
                boxes = torch.cat([box[None], noise])
                scores = torch.tensor([0.9, 0.1], device=image.device)
                labels = torch.tensor([1, 2], device=image.device)
            out.append({"boxes": boxes, "scores": scores, "labels": labels})
        return out


class ColourClassifier(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=(2, 3)) * 10.0


def torchscript_bytes(module: nn.Module, schema: dict | None = None) -> bytes:
    """``module`` scripted and saved, with a Lightly ``schema.json`` stored in the file if given."""
    buffer = io.BytesIO()
    extra = {"schema.json": json.dumps(schema)} if schema else {}
    torch.jit.save(torch.jit.script(module), buffer, _extra_files=extra)
    return buffer.getvalue()


def detector_schema() -> dict:
    return {
        "task_type": "object-detection",
        "categories": [{"id": i, "name": n} for i, n in enumerate(DETECTOR_CATEGORIES)],
    }


def red_box_image(path: Path, size: tuple[int, int], box: tuple[int, int, int, int], seed: int) -> None:
    """A noisy grey-blue image of ``size`` (w, h) with a pure red rectangle ``box`` (x1, y1, x2, y2)."""
    rng = np.random.default_rng(seed)
    width, height = size
    pixels = rng.integers(40, 120, size=(height, width, 3), dtype=np.uint8)
    pixels[..., 2] = 160
    x1, y1, x2, y2 = box
    pixels[y1:y2, x1:x2] = (230, 20, 20)
    Image.fromarray(pixels).save(path)
