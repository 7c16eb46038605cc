"""Selected video frames as image files: PNG or JPEG bytes, optionally resized.

A module of its own (numpy and PIL only) so that the decoder child process can encode the frames it dumps.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def encode_frame(rgb: np.ndarray, *, fmt: str, image_size: int | None) -> bytes:
    """(H, W, 3) uint8 -> PNG or JPEG bytes, the longer side resized to ``image_size`` if given."""
    image = Image.fromarray(rgb)
    if image_size:
        scale = image_size / max(image.size)
        target = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(target, Image.Resampling.BILINEAR, reducing_gap=2.0)
    buffer = io.BytesIO()
    if fmt == "jpeg":
        image.save(buffer, format="JPEG", quality=95)
    else:
        image.save(buffer, format="PNG")
    return buffer.getvalue()
