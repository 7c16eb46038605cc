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
import threading

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

_LUMA_WEIGHTS: tuple[int, int, int] = (299, 587, 114)
"""ITU-R BT.601 luma weights x1000 (Pillow's "L" conversion), kept integral so sums are exact."""

_LEVELS = np.arange(256, dtype=np.int64)
_LEVELS_SQUARED = _LEVELS * _LEVELS


def image_metadata(rgb: np.ndarray, *, size_in_bytes: int) -> dict[str, float | int]:
    """Compute cheap, JSON- and Parquet-ready metadata of one decoded image.

    rgb: (H, W, 3) uint8, the decoded image (after EXIF orientation). `size_in_bytes` is the size of the
    original object in the datasource (Lightly's `sizeInBytes`), not of any re-encoding.

    `width`/`height` are of `rgb` itself (Lightly keeps `shape: [H, W, C]`). Everything else is measured on
    a working copy box-downscaled by the smallest integer factor that brings the long side to at most
    `WORK_MAX_SIDE` (512) px (`work_size`), so the cost is bounded for any input size; images up to 512 px
    are measured as they are. With Y = BT.601 luma (0.299 R + 0.587 G + 0.114 B, in 0..255):

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

    All statistics use exact integer sums (channel sums and squares from 256-bin histograms, luma and
    Laplacian in int32, their squares summed in int64), so constant images give 0 (never NaN or inf).
    The decoding pass, which already holds a working copy, calls `working_copy_metadata` instead.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or 0 in rgb.shape:
        raise ValueError(f"expected a non-empty (H, W, 3) uint8 array, got {rgb.dtype} {rgb.shape}")
    height, width = int(rgb.shape[0]), int(rgb.shape[1])
    factor = work_factor(width, height)
    if factor <= 1:
        return _measure(rgb, None, width=width, height=height, size_in_bytes=size_in_bytes)
    work = Image.fromarray(rgb).reduce(factor)
    return _measure(np.asarray(work), work, width=width, height=height, size_in_bytes=size_in_bytes)


def working_copy_metadata(
    work: Image.Image, *, width: int, height: int, size_in_bytes: int
) -> dict[str, float | int]:
    """`image_metadata` of a `width` x `height` image from its working copy `work` (8-bit RGB).

    `work` must be `work_size(width, height)`; `working_copy` makes one from the image or from a reduced
    decode of it. Equal to `image_metadata` when `work` is the box-downscaled full image. When it comes from
    a JPEG decoded at 1/s DCT scale (`reduced_decode_size`, `corruptness.check_image`'s ``draft_size``) and
    box-reduced by the rest of the factor, the values are those of that decode. On the demo photos and 640x480
    to 5644x5644 JPEGs of them (s = 2 to 8) means, stds, luminance and contrast moved by at most 0.0012
    (0.3 grey levels), sharpness by at most 0.8 % and snr by at most 1.3 % relative, uniformRowRatio not at
    all.
    """
    if work.mode != "RGB" or work.size != work_size(width, height):
        raise ValueError(
            f"expected an RGB working copy of size {work_size(width, height)}, got {work.mode} {work.size}"
        )
    return _measure(np.asarray(work), work, width=width, height=height, size_in_bytes=size_in_bytes)


def work_factor(width: int, height: int) -> int:
    """The smallest integer factor that brings the long side of `width` x `height` to <= WORK_MAX_SIDE."""
    return max(1, math.ceil(max(width, height) / WORK_MAX_SIDE))


def work_size(width: int, height: int) -> tuple[int, int]:
    """(width, height) of the working copy of a `width` x `height` image (Pillow's `reduce` rounds up)."""
    factor = work_factor(width, height)
    return -(-width // factor), -(-height // factor)


def reduced_decode_size(width: int, height: int, *, min_side: int = 1) -> tuple[int, int]:
    """The size to ask a reduced JPEG decode (`Image.draft`) for, for a `width` x `height` image.

    Picks the largest DCT scale 1/s (s in 8, 4, 2) that divides `work_factor`, so that the working copy is
    still an exact integer box-reduction (by factor / s) of the reduced decode, and that keeps both sides of
    the decode at least `min_side` (the thumbnail size) or the full side when that is shorter. Returns
    (width // s, height // s), which makes Pillow choose exactly 1/s; (width, height) when no s > 1 fits.
    """
    factor = work_factor(width, height)
    for scale in (8, 4, 2):
        if factor % scale == 0 and all(-(-side // scale) >= min(min_side, side) for side in (width, height)):
            return width // scale, height // scale
    return width, height


def working_copy(image: Image.Image, *, full_size: tuple[int, int] | None = None) -> Image.Image:
    """The working copy of an RGB image whose full resolution is `full_size` (default: its own size).

    `image` is the full image, or a JPEG decoded at 1/2, 1/4 or 1/8 scale (`reduced_decode_size`). The full
    image is box-downscaled by `work_factor` (`Image.reduce`), a reduced decode by the rest of that factor;
    any other smaller image is area-resampled (box filter) to the working size. Returns `image` itself when
    it already has the working size.
    """
    width, height = full_size or image.size
    target = work_size(width, height)
    if image.size == target:
        return image
    factor = work_factor(width, height)
    for scale in (1, 2, 4, 8):
        if factor % scale == 0 and image.size == (-(-width // scale), -(-height // scale)):
            return image.reduce(factor // scale)
    if image.size[0] < target[0] or image.size[1] < target[1]:
        raise ValueError(f"{image.size} is smaller than the working size {target} of {width}x{height}")
    return image.resize(target, Image.Resampling.BOX)


def _measure(
    work: np.ndarray, image: Image.Image | None, *, width: int, height: int, size_in_bytes: int
) -> dict[str, float | int]:
    """The metadata of a `width` x `height` image from its (h, w, 3) uint8 working copy `work`.

    `image` is the same working copy as a Pillow image when the caller has one (its histogram is cheaper).
    """
    n_pixels = work.shape[0] * work.shape[1]
    image = Image.fromarray(work) if image is None else image
    histogram = np.asarray(image.histogram(), dtype=np.int64).reshape(3, 256)
    channel_sums = [int(total) for total in histogram @ _LEVELS]
    channel_squares = [int(total) for total in histogram @ _LEVELS_SQUARED]
    means = [total / n_pixels / 255.0 for total in channel_sums]
    stds = [
        _exact_std(total, squares, n_pixels) / 255.0
        for total, squares in zip(channel_sums, channel_squares, strict=True)
    ]
    all_sum, all_squares = sum(channel_sums), sum(channel_squares)
    all_std = _exact_std(all_sum, all_squares, 3 * n_pixels)
    snr = all_sum / (3 * n_pixels) / all_std if all_std > 0 else 0.0

    scratch = _SCRATCH.buffers(n_pixels)
    luma = _luma(work, scratch)
    luma_sum = sum(weight * total for weight, total in zip(_LUMA_WEIGHTS, channel_sums, strict=True))
    luminance = luma_sum / n_pixels / 1000.0 / 255.0
    contrast = _exact_std(luma_sum, _sum_of_squares(luma, scratch), n_pixels) / 1000.0 / 255.0
    laplacian = _laplacian(luma, scratch)
    if laplacian.size:
        lap_sum = int(laplacian.sum(dtype=np.int64))
        sharpness = _exact_std(lap_sum, _sum_of_squares(laplacian, scratch), laplacian.size) / 1000.0
        threshold = math.ceil(UNIFORM_PIXEL_LAPLACE_THRESHOLD * 1000)
        # integer |L| < t  <=>  0 <= L + (t - 1) < 2t - 1: one unsigned comparison, in the free buffer 0
        shifted = _view(scratch.int32[0], laplacian.shape)
        np.add(laplacian, np.int32(threshold - 1), out=shifted)
        uniform = _view(scratch.mask, laplacian.shape)
        np.less(shifted.view(np.uint32), np.uint32(2 * threshold - 1), out=uniform)
        uniform_counts = uniform.sum(axis=1, dtype=np.int64)
        uniform_row_ratio = float(np.mean(uniform_counts / laplacian.shape[1] > UNIFORM_ROW_PIXEL_RATIO))
    else:
        sharpness, uniform_row_ratio = 0.0, 0.0

    values: list[float | int] = [
        int(size_in_bytes),
        int(width),
        int(height),
        *means,
        *stds,
        luminance,
        contrast,
        sharpness,
        float(snr),
        uniform_row_ratio,
    ]
    return dict(zip(METADATA_KEYS, values, strict=True))


class _Scratch(threading.local):
    """Per-thread flat buffers for the working copy's luma and Laplacian, reused from image to image.

    Allocating and freeing these (hundreds of KiB each) per image costs more than the arithmetic: glibc
    serves them with fresh pages (mmap, or a heap it trims back), so every image page-faults them in again.
    One set per thread keeps `image_metadata` thread-safe; a pool's threads free theirs when they end.
    """

    def __init__(self) -> None:
        self.capacity = 0
        self.int32: list[np.ndarray] = []
        self.int64 = np.empty(0, dtype=np.int64)
        self.mask = np.empty(0, dtype=bool)

    def buffers(self, n_pixels: int) -> _Scratch:
        if n_pixels > self.capacity:
            self.capacity = max(n_pixels, WORK_MAX_SIDE * WORK_MAX_SIDE)
            self.int32 = [np.empty(self.capacity, dtype=np.int32) for _ in range(3)]
            self.int64 = np.empty(self.capacity, dtype=np.int64)
            self.mask = np.empty(self.capacity, dtype=bool)
        return self


_SCRATCH = _Scratch()


def _view(buffer: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The first prod(shape) items of a flat scratch buffer, as a C-contiguous array of that shape."""
    return buffer[: math.prod(shape)].reshape(shape)


def _luma(work: np.ndarray, scratch: _Scratch) -> np.ndarray:
    """1000 x BT.601 luma of (h, w, 3) uint8 as exact (h, w) int32 (at most 255000), in scratch buffer 1."""
    red, green, blue = (np.int32(weight) for weight in _LUMA_WEIGHTS)
    shape = work.shape[:2]
    luma, term = _view(scratch.int32[1], shape), _view(scratch.int32[0], shape)
    np.multiply(work[:, :, 0], red, out=luma)
    luma += np.multiply(work[:, :, 1], green, out=term)
    luma += np.multiply(work[:, :, 2], blue, out=term)
    return luma


def _laplacian(luma: np.ndarray, scratch: _Scratch) -> np.ndarray:
    """8-neighbour Laplacian of (H, W) int32 luma on its interior: (H-2, W-2) int32, empty below 3x3.

    Exact in int32: |response| <= 8 x 255000. The 3x3 box sum is separable (rows, then columns). The result
    lives in scratch buffer 2; buffer 0 is free again afterwards.
    """
    height, width = luma.shape
    if height < 3 or width < 3:
        return np.zeros((0, 0), dtype=np.int32)
    rows = _view(scratch.int32[0], (height, width - 2))
    np.add(luma[:, :-2], luma[:, 1:-1], out=rows)
    rows += luma[:, 2:]
    box = _view(scratch.int32[2], (height - 2, width - 2))
    np.add(rows[:-2], rows[1:-1], out=box)
    box += rows[2:]
    centre = _view(scratch.int32[0], box.shape)
    np.multiply(luma[1:-1, 1:-1], np.int32(9), out=centre)
    return np.subtract(centre, box, out=box)


def _sum_of_squares(values: np.ndarray, scratch: _Scratch) -> int:
    """Exact sum of squares of a C-contiguous int32 array (each square < 2**43, so int64 holds the sum)."""
    flat = values.reshape(-1)
    squares = scratch.int64[: flat.size]
    np.multiply(flat, flat, out=squares, dtype=np.int64)
    return int(squares.sum())


def _exact_std(total: int, total_squares: int, count: int) -> float:
    """Population std from exact integer sums; exactly 0.0 for constant data."""
    return math.sqrt(max(count * total_squares - total * total, 0)) / count
