"""Per-sample metadata on constructed arrays with known answers, and on a real photo."""

from __future__ import annotations

import io
import json
import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from lightly_tasks import demo_data
from lightly_tasks.corruptness import check_image
from lightly_tasks.metadata import (
    METADATA_KEYS,
    image_metadata,
    reduced_decode_size,
    work_size,
    working_copy,
    working_copy_metadata,
)


def _constant(value: tuple[int, int, int], height: int = 40, width: int = 60) -> np.ndarray:
    return np.broadcast_to(np.array(value, dtype=np.uint8), (height, width, 3)).copy()


def _checkerboard(height: int = 64, width: int = 64) -> np.ndarray:
    cells = (np.add.outer(np.arange(height), np.arange(width)) % 2).astype(np.uint8) * 255
    return np.repeat(cells[:, :, None], 3, axis=2)


@pytest.mark.parametrize("value", [(0, 0, 0), (128, 128, 128), (255, 255, 255), (200, 30, 90)])
def test_constant_image(value: tuple[int, int, int]) -> None:
    meta = image_metadata(_constant(value), size_in_bytes=1234)
    assert meta["contrast"] == 0.0
    assert meta["sharpness"] == 0.0
    assert meta["uniformRowRatio"] == 1.0
    assert meta["snr"] == pytest.approx(np.mean(value) / np.std(value) if len(set(value)) > 1 else 0.0)
    assert (meta["stdRed"], meta["stdGreen"], meta["stdBlue"]) == (0.0, 0.0, 0.0)
    assert (meta["meanRed"], meta["meanGreen"], meta["meanBlue"]) == pytest.approx([v / 255 for v in value])
    luma = (0.299 * value[0] + 0.587 * value[1] + 0.114 * value[2]) / 255
    assert meta["luminance"] == pytest.approx(luma)
    assert all(math.isfinite(v) for v in meta.values())


def test_size_and_shape_keys() -> None:
    meta = image_metadata(_constant((1, 2, 3), height=30, width=70), size_in_bytes=98765)
    assert tuple(meta) == METADATA_KEYS
    assert (meta["sizeInBytes"], meta["width"], meta["height"]) == (98765, 70, 30)
    assert all(type(meta[k]) is int for k in ("sizeInBytes", "width", "height"))
    assert all(type(meta[k]) is float for k in METADATA_KEYS[3:])


def test_checkerboard_is_sharp_and_has_full_contrast() -> None:
    meta = image_metadata(_checkerboard(), size_in_bytes=1)
    assert meta["sharpness"] == pytest.approx(4 * 255)
    assert meta["contrast"] == pytest.approx(0.5)
    assert meta["luminance"] == pytest.approx(0.5)
    assert meta["snr"] == pytest.approx(1.0)
    assert meta["uniformRowRatio"] == 0.0


def test_smooth_ramp_is_not_sharp() -> None:
    ramp = np.tile(np.arange(0, 250, 2, dtype=np.uint8), (50, 1))
    meta = image_metadata(np.repeat(ramp[:, :, None], 3, axis=2), size_in_bytes=1)
    assert meta["sharpness"] == 0.0
    assert meta["uniformRowRatio"] == 1.0
    assert meta["contrast"] > 0.25


def test_known_channel_means_and_stds() -> None:
    rgb = np.zeros((10, 20, 3), dtype=np.uint8)
    rgb[:, :10, 0] = 255
    rgb[:, :, 1] = 51
    rgb[:5, :, 2] = 102
    meta = image_metadata(rgb, size_in_bytes=1)
    assert (meta["meanRed"], meta["meanGreen"], meta["meanBlue"]) == pytest.approx([0.5, 0.2, 0.2])
    assert (meta["stdRed"], meta["stdGreen"], meta["stdBlue"]) == pytest.approx([0.5, 0.0, 0.2])


def test_uniform_row_ratio_counts_blank_rows() -> None:
    rgb = _constant((90, 90, 90), height=100, width=100)
    rng = np.random.default_rng(0)
    rgb[:30] = rng.integers(0, 256, size=(30, 100, 3), dtype=np.uint8)
    meta = image_metadata(rgb, size_in_bytes=1)
    assert meta["uniformRowRatio"] == pytest.approx(68 / 98)


def test_tiny_images_are_defined() -> None:
    meta = image_metadata(np.full((2, 1, 3), 9, dtype=np.uint8), size_in_bytes=5)
    assert (meta["sharpness"], meta["uniformRowRatio"], meta["width"], meta["height"]) == (0.0, 0.0, 1, 2)


def test_large_images_are_measured_downscaled() -> None:
    big = np.repeat(np.repeat(_checkerboard(300, 200), 5, axis=0), 5, axis=1)
    meta = image_metadata(big, size_in_bytes=1)
    assert (meta["width"], meta["height"]) == (1000, 1500)
    assert meta["sharpness"] > 500
    assert meta["luminance"] == pytest.approx(0.5, abs=0.01)


def test_real_photo_is_json_serialisable() -> None:
    data = demo_data.cmyk_jpeg()
    check = check_image(data)
    assert check.image is not None
    meta = image_metadata(np.asarray(check.image), size_in_bytes=len(data))
    assert json.loads(json.dumps(meta)) == meta
    assert meta["sizeInBytes"] == len(data)
    assert 0 < meta["luminance"] < 1 and 0 < meta["contrast"] < 0.5
    assert meta["sharpness"] > 0 and meta["snr"] > 0
    assert 0 <= meta["uniformRowRatio"] < 0.5


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((4, 4), np.uint8),
        np.zeros((4, 4, 4), np.uint8),
        np.zeros((4, 4, 3), np.float32),
        np.zeros((0, 4, 3), np.uint8),
    ],
)
def test_rejects_other_arrays(bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        image_metadata(bad, size_in_bytes=1)


def _photo(width: int, height: int) -> np.ndarray:
    image = demo_data.source_image("chelsea").convert("RGB").resize((width, height), Image.Resampling.BICUBIC)
    return np.asarray(image)


@pytest.mark.parametrize(("width", "height"), [(60, 40), (512, 300), (640, 480), (1001, 767), (1500, 999)])
def test_working_copy_metadata_equals_image_metadata(width: int, height: int) -> None:
    rgb = _photo(width, height)
    work = working_copy(Image.fromarray(rgb))
    assert work.size == work_size(width, height)
    got = working_copy_metadata(work, width=width, height=height, size_in_bytes=3)
    assert got == image_metadata(rgb, size_in_bytes=3)


def test_working_copy_metadata_rejects_a_wrong_size() -> None:
    with pytest.raises(ValueError, match="working copy"):
        working_copy_metadata(Image.new("RGB", (400, 300)), width=1000, height=750, size_in_bytes=1)


@pytest.mark.parametrize(
    ("size", "min_side", "expected"),
    [
        ((640, 480), 224, (320, 240)),  # factor 2, 1/2 still >= 224
        ((640, 427), 224, (640, 427)),  # 1/2 would be 214 px high: decoded whole
        ((4000, 3000), 224, (500, 375)),  # factor 8
        ((4000, 3000), 400, (1000, 750)),  # 1/8 too small for a 400 px thumbnail
        ((1500, 1000), 32, (1500, 1000)),  # factor 3: no DCT scale divides it
        ((3000, 2000), 32, (1500, 1000)),  # factor 6: 1/2, then reduce(3)
        ((300, 200), 32, (300, 200)),  # factor 1
    ],
)
def test_reduced_decode_size(size: tuple[int, int], min_side: int, expected: tuple[int, int]) -> None:
    assert reduced_decode_size(*size, min_side=min_side) == expected


@pytest.mark.parametrize(("width", "height"), [(1024, 768), (2048, 1536), (1999, 1201), (3000, 2000)])
def test_reduced_jpeg_decode_metadata_stays_close(width: int, height: int) -> None:
    out = io.BytesIO()
    Image.fromarray(_photo(width, height)).save(out, "JPEG", quality=90)
    data = out.getvalue()
    full = check_image(data)
    reduced = check_image(data, draft_size=lambda w, h: reduced_decode_size(w, h, min_side=224))
    assert full.image is not None and reduced.image is not None and reduced.full_size == (width, height)
    assert reduced.image.size != full.image.size
    expected = image_metadata(np.asarray(full.image), size_in_bytes=len(data))
    got = working_copy_metadata(
        working_copy(reduced.image, full_size=reduced.full_size),
        width=width,
        height=height,
        size_in_bytes=len(data),
    )
    assert tuple(got) == METADATA_KEYS
    for key in ("sizeInBytes", "width", "height", "uniformRowRatio"):
        assert got[key] == expected[key], key
    for key in ("meanRed", "meanGreen", "meanBlue", "stdRed", "stdGreen", "stdBlue", "luminance", "contrast"):
        assert got[key] == pytest.approx(expected[key], abs=0.002), key
    for key in ("sharpness", "snr"):
        assert got[key] == pytest.approx(expected[key], rel=0.02), key


def test_working_copy_of_other_reduced_images_is_box_resampled() -> None:
    image = Image.fromarray(_photo(700, 500))
    work = working_copy(image, full_size=(1500, 1000))
    assert work.size == work_size(1500, 1000) == (500, 334)
    with pytest.raises(ValueError, match="smaller than the working size"):
        working_copy(Image.new("RGB", (100, 80)), full_size=(1500, 1000))


def test_metadata_is_thread_safe() -> None:
    rng = np.random.default_rng(3)
    arrays = [
        rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        for h, w in [(40, 60), (512, 512), (3, 700), (480, 640), (1, 5), (300, 1200), (97, 53)]
    ]
    expected = [image_metadata(a, size_in_bytes=i) for i, a in enumerate(arrays)]
    jobs = list(enumerate(arrays)) * 6
    with ThreadPoolExecutor(max_workers=6) as pool:
        got = list(pool.map(lambda job: image_metadata(job[1], size_in_bytes=job[0]), jobs))
    assert got == expected * 6
