"""Per-sample image metadata under the Lightly Worker's key names.

Key names follow Lightly's `SampleMetaData` model (open-source `lightly` client,
`lightly/openapi_generated/swagger_client/models/sample_meta_data.py`: `sizeInBytes`, `snr`, `sharpness`,
`mean`, `std`, `shape`, ...) and the Worker's "Lightly metadata" selection keys (`lightly.sharpness`,
`lightly.uniformRowRatio`, ...; this module returns the names without the `lightly.` prefix). Definitions
follow Lightly's open-source `lightly_utils.image_processing` metadata and the Worker's row-uniformity
metric wherever those are published; the docstring of `image_metadata` says where and why they differ.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

WORK_MAX_SIDE: int = 512
"""Images with a longer side are box-downscaled by an integer factor to at most this many pixels first."""

UNIFORM_PIXEL_LAPLACE_THRESHOLD: float = 5.0
"""A pixel is uniform when its 3x3 Laplacian response is below this (8-bit luminance units), as Lightly."""

UNIFORM_ROW_PIXEL_RATIO: float = 0.97
"""A row is uniform when more than this fraction of its pixels is uniform, as Lightly."""

METADATA_KEYS: tuple[str, ...] = (
    "sizeInBytes",
    "width",
    "height",
    "meanRed",
    "meanGreen",
    "meanBlue",
    "stdRed",
    "stdGreen",
    "stdBlue",
    "luminance",
    "contrast",
    "sharpness",
    "snr",
    "uniformRowRatio",
)
"""Every key `image_metadata` returns, in order (a stable column order for Parquet tables)."""

_LUMA_WEIGHTS = np.array([299, 587, 114], dtype=np.int64)
"""ITU-R BT.601 luma weights x1000 (Pillow's "L" conversion), kept integral so sums are exact."""


def image_metadata(rgb: np.ndarray, *, size_in_bytes: int) -> dict[str, float | int]:
    """Compute cheap, JSON- and Parquet-ready metadata of one decoded image.

    rgb: (H, W, 3) uint8, the decoded image (after EXIF orientation). `size_in_bytes` is the size of the
    original object in the datasource (Lightly's `sizeInBytes`), not of any re-encoding.

    `width`/`height` are of `rgb` itself (Lightly keeps `shape: [H, W, C]`). Everything else is measured on
    a working copy box-downscaled by the smallest integer factor that brings the long side to at most
    `WORK_MAX_SIDE` (512) px, so the cost is bounded for any input size; images up to 512 px are measured
    as they are. With Y = BT.601 luma (0.299 R + 0.587 G + 0.114 B, in 0..255):

    - `meanRed/Green/Blue`, `stdRed/Green/Blue`: per-channel mean and population std of values / 255,
      in [0, 1]. Lightly stores them as lists `mean: [r, g, b]`, `std: [r, g, b]`; flat keys here keep
      the table columns scalar.
    - `luminance`: mean(Y) / 255, in [0, 1].
    - `contrast`: RMS contrast, std(Y) / 255, in [0, 0.5].
    - `sharpness`: std of the 3x3 8-neighbour Laplacian (kernel [-1 -1 -1; -1 8 -1; -1 -1 -1]) of Y on the
      interior pixels, in 8-bit units, as `lightly_utils` (which reports the std, not the variance).
      Unlike Lightly's Pillow filter the response is not clipped to 0..255 and border pixels are not
      counted, so a constant image scores exactly 0. Because it is measured at <= 512 px, it compares
      images by their content rather than by their resolution.
    - `snr`: mean / std of all R, G, B values pooled together, 0 when that std is 0, as `lightly_utils`
      (so a flat grey image scores 0, while a flat non-grey colour scores its channel spread).
    - `uniformRowRatio`: Lightly Worker's row uniformity: the fraction of rows in which more than 97 % of
      the pixels have |Laplacian(Y)| < 5 (near-constant neighbourhood); in [0, 1], 1 for a blank image,
      0 when a side is shorter than 3 px. Lightly measures it at <= 400 px height; here at <= 512 px.

    All statistics use exact integer sums, so constant images give 0 (never NaN or inf).
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or 0 in rgb.shape:
        raise ValueError(f"expected a non-empty (H, W, 3) uint8 array, got {rgb.dtype} {rgb.shape}")
    height, width = int(rgb.shape[0]), int(rgb.shape[1])
    work = _downscale(rgb).astype(np.int64)
    n_pixels = work.shape[0] * work.shape[1]

    channel_sums = work.sum(axis=(0, 1))
    channel_squares = (work * work).sum(axis=(0, 1))
    means = [int(total) / n_pixels / 255.0 for total in channel_sums]
    stds = [
        _exact_std(int(total), int(squares), n_pixels) / 255.0
        for total, squares in zip(channel_sums, channel_squares, strict=True)
    ]
    all_sum, all_squares = int(channel_sums.sum()), int(channel_squares.sum())
    all_std = _exact_std(all_sum, all_squares, 3 * n_pixels)
    snr = all_sum / (3 * n_pixels) / all_std if all_std > 0 else 0.0

    luma = work @ _LUMA_WEIGHTS
    luminance = int(luma.sum()) / n_pixels / 1000.0 / 255.0
    contrast = _exact_std(int(luma.sum()), int((luma * luma).sum()), n_pixels) / 1000.0 / 255.0
    laplacian = _laplacian(luma)
    if laplacian.size:
        lap_squares = int((laplacian * laplacian).sum())
        sharpness = _exact_std(int(laplacian.sum()), lap_squares, laplacian.size) / 1000.0
        uniform = np.abs(laplacian) < UNIFORM_PIXEL_LAPLACE_THRESHOLD * 1000
        uniform_row_ratio = float(np.mean(uniform.mean(axis=1) > UNIFORM_ROW_PIXEL_RATIO))
    else:
        sharpness, uniform_row_ratio = 0.0, 0.0

    values: list[float | int] = [
        int(size_in_bytes),
        width,
        height,
        *means,
        *stds,
        luminance,
        contrast,
        sharpness,
        float(snr),
        uniform_row_ratio,
    ]
    return dict(zip(METADATA_KEYS, values, strict=True))


def _downscale(rgb: np.ndarray) -> np.ndarray:
    """Box-downscale (H, W, 3) uint8 by the smallest integer factor giving a long side <= WORK_MAX_SIDE."""
    factor = math.ceil(max(rgb.shape[:2]) / WORK_MAX_SIDE)
    if factor <= 1:
        return rgb
    return np.asarray(Image.fromarray(rgb).reduce(factor))


def _laplacian(luma: np.ndarray) -> np.ndarray:
    """8-neighbour Laplacian of a (H, W) int64 array on its interior: (H-2, W-2), empty below 3x3."""
    if luma.shape[0] < 3 or luma.shape[1] < 3:
        return np.zeros((0, 0), dtype=np.int64)
    box = np.zeros((luma.shape[0] - 2, luma.shape[1] - 2), dtype=np.int64)
    for dy in range(3):
        for dx in range(3):
            box += luma[dy : dy + box.shape[0], dx : dx + box.shape[1]]
    return 9 * luma[1:-1, 1:-1] - box


def _exact_std(total: int, total_squares: int, count: int) -> float:
    """Population std from exact integer sums; exactly 0.0 for constant data."""
    return math.sqrt(max(count * total_squares - total * total, 0)) / count
