"""The decoded cache's thumbnails: whole images resized to a square of the embedding size.

A module of its own (numpy and PIL only) so that the decoder child process can use it and start fast.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def thumbnail(image: Image.Image, size: int) -> np.ndarray:
    """Resize the whole image (no crop) to ``size`` x ``size`` RGB and return it as (S, S, 3) uint8."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    return np.asarray(rgb.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0))
