"""Image integrity verdicts on real broken and real unusual-but-valid files."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image, ImageFile

from lightly_tasks import demo_data
from lightly_tasks.corruptness import DEFAULT_MAX_PIXELS, check_image, content_hash, to_rgb

pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def _with_ihdr_size(png: bytes, width: int, height: int) -> bytes:
    """Rewrite a PNG's declared size (and the IHDR CRC) without touching its pixel data."""
    ihdr = bytearray(png[12:29])
    ihdr[4:12] = struct.pack(">II", width, height)
    return png[:12] + bytes(ihdr) + struct.pack(">I", zlib.crc32(ihdr)) + png[33:]


@pytest.mark.parametrize(
    ("factory", "prefix"),
    [(factory, prefix) for factory, prefix in demo_data.BROKEN.values()],
    ids=[factory.__name__ for factory, _ in demo_data.BROKEN.values()],
)
def test_broken_kinds_are_corrupt_with_their_reason(factory: Callable[[], bytes], prefix: str) -> None:
    check = check_image(factory())
    assert not check.ok
    assert check.image is None
    assert check.reason is not None and check.reason.startswith(prefix), check.reason


def test_reasons_name_the_details() -> None:
    assert check_image(demo_data.zero_byte()).reason == "empty file"
    assert check_image(demo_data.not_an_image()).reason == "not an image: cannot identify image file"
    assert check_image(demo_data.decompression_bomb()).reason == (
        f"decompression bomb: 10000x10000 = 100000000 pixels > limit {DEFAULT_MAX_PIXELS}"
    )
    lab = check_image(demo_data.unsupported_mode())
    assert (lab.reason, lab.format, lab.original_mode) == ("unsupported mode LAB", "TIFF", "LAB")
    crc = check_image(demo_data.bad_png_crc())
    assert crc.format == "PNG" and "IDAT" in str(crc.reason)


def test_loading_truncated_images_stays_off() -> None:
    check_image(demo_data.truncated_jpeg())
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    assert Image.MAX_IMAGE_PIXELS == DEFAULT_MAX_PIXELS


def test_truncated_png_is_corrupt() -> None:
    data = demo_data._encode(demo_data.source_image("coffee"), "PNG")
    check = check_image(data[: len(data) // 2])
    assert not check.ok
    assert check.reason is not None and check.reason.startswith("truncated"), check.reason


@pytest.mark.parametrize("factory", list(demo_data.CONVERTIBLE.values()), ids=list(demo_data.CONVERTIBLE))
def test_convertible_oddities_become_rgb(factory: Callable[[], bytes]) -> None:
    data = factory()
    with Image.open(io.BytesIO(data)) as raw:
        stored_size, stored_mode = raw.size, raw.mode
    check = check_image(data)
    assert check.ok, check.reason
    assert check.reason is None
    assert check.image is not None and check.image.mode == "RGB"
    assert check.original_mode == stored_mode
    expected = stored_size[::-1] if factory is demo_data.exif_rotated_jpeg else stored_size
    assert check.image.size == expected
    assert np.asarray(check.image).dtype == np.uint8


def test_exif_rotation_shows_the_photo_upright() -> None:
    check = check_image(demo_data.exif_rotated_jpeg())
    assert check.image is not None and check.image.size == (200, 320)
    upright = np.asarray(demo_data._crop(demo_data.source_image("rocket"), (100, 80, 300, 400)), dtype=float)
    assert np.abs(np.asarray(check.image, dtype=float) - upright).mean() < 6


def test_16bit_range_is_stretched_to_8bit() -> None:
    check = check_image(demo_data.gray16_png())
    assert check.original_mode == "I;16" and check.image is not None
    camera = np.asarray(demo_data._crop(demo_data.source_image("camera"), (64, 32, 448, 320)))
    rgb = np.asarray(check.image)
    lo, hi = int(camera.min()), int(camera.max())
    expected = np.rint((camera.astype(float) - lo) * 255 / (hi - lo))
    assert np.abs(rgb[:, :, 0] - expected).max() <= 1
    assert (rgb[:, :, 0] == rgb[:, :, 2]).all()


def test_alpha_is_composited_on_white() -> None:
    rgba = Image.new("RGBA", (4, 2), (10, 20, 30, 255))
    rgba.putpixel((0, 0), (10, 20, 30, 0))
    rgba.putpixel((1, 0), (0, 0, 0, 128))
    check = check_image(_png(rgba))
    assert check.ok and check.image is not None
    assert check.image.getpixel((0, 0)) == (255, 255, 255)
    assert check.image.getpixel((1, 0)) == pytest.approx((127, 127, 127), abs=1)
    assert check.image.getpixel((2, 1)) == (10, 20, 30)


@pytest.mark.parametrize(
    ("array", "mode"),
    [
        (np.array([[0, 1000], [3000, 2000]], dtype=np.int32), "I"),
        (np.array([[-1.5, 0.5], [np.nan, 2.5]], dtype=np.float32), "F"),
        (np.array([[7, 7], [7, 7]], dtype=np.uint16), "I;16"),
    ],
)
def test_high_depth_modes_use_their_real_range(array: np.ndarray, mode: str) -> None:
    image = Image.fromarray(array)
    assert image.mode == mode
    grey = np.asarray(to_rgb(image))[:, :, 0]
    if mode == "I;16":
        assert (grey == 0).all()
    else:
        assert grey.min() == 0 and grey.max() == 255


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "PA", "RGBA", "CMYK", "YCbCr", "RGBX", "I;16B"])
def test_every_sensible_mode_converts(mode: str) -> None:
    rgb = to_rgb(Image.new("RGB", (5, 3), (200, 100, 50)).convert("L").convert(mode))
    assert rgb.mode == "RGB" and rgb.size == (5, 3)


def test_hsv_is_unsupported() -> None:
    hsv = Image.new("RGB", (4, 4), (200, 100, 50)).convert("HSV")
    with pytest.raises(ValueError, match="unsupported mode HSV"):
        to_rgb(hsv)


def test_animated_gif_uses_the_first_frame() -> None:
    data = demo_data.animated_gif()
    with Image.open(io.BytesIO(data)) as gif:
        assert gif.n_frames == 3
        first = np.asarray(gif.convert("RGB"))
    check = check_image(data)
    assert check.ok and check.image is not None
    assert np.array_equal(np.asarray(check.image), first)


def test_max_pixels_is_honoured_before_decoding() -> None:
    data = _png(Image.new("RGB", (40, 30), (1, 2, 3)))
    assert check_image(data, max_pixels=1200).ok
    small = check_image(data, max_pixels=1199)
    assert small.reason == "decompression bomb: 40x30 = 1200 pixels > limit 1199"
    assert small.format == "PNG"


def test_pillow_own_bomb_limit_is_reported_not_raised() -> None:
    huge = _with_ihdr_size(_png(Image.new("L", (1, 1))), 20_000, 20_000)
    check = check_image(huge, max_pixels=10**12)
    assert not check.ok
    assert check.reason is not None and check.reason.startswith("decompression bomb: "), check.reason


@pytest.mark.parametrize(
    "data",
    [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"BM" + b"\x00" * 60, b"\x00" * 1000, b"II*\x00"],
)
def test_garbage_never_raises(data: bytes) -> None:
    check = check_image(data)
    assert not check.ok and check.reason


def test_thread_safe_verdicts() -> None:
    payloads = [factory() for factory, _ in demo_data.BROKEN.values()] + [
        factory() for factory in demo_data.CONVERTIBLE.values()
    ]
    expected = [check_image(data).reason for data in payloads]
    with ThreadPoolExecutor(max_workers=8) as pool:
        got = list(pool.map(lambda data: check_image(data).reason, payloads * 4))
    assert got == expected * 4


def test_content_hash() -> None:
    data = demo_data.gray_jpeg()
    assert content_hash(data) == content_hash(bytes(bytearray(data)))
    assert content_hash(data) != content_hash(data + b"\x00")
    assert content_hash(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def _jpeg(image: Image.Image, **params: object) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90, **params)
    return out.getvalue()


def _big_photo(size: tuple[int, int] = (2048, 1536)) -> Image.Image:
    return demo_data.source_image("astronaut").convert("RGB").resize(size, Image.Resampling.BICUBIC)


def test_reduced_jpeg_decode_keeps_the_declared_size() -> None:
    data = _jpeg(_big_photo())
    full = check_image(data)
    assert full.ok and full.image is not None and full.image.size == full.full_size == (2048, 1536)
    seen: list[tuple[int, int]] = []

    def quarter(width: int, height: int) -> tuple[int, int]:
        seen.append((width, height))
        return width // 4, height // 4

    reduced = check_image(data, draft_size=quarter)
    assert seen == [(2048, 1536)]
    assert reduced.ok and reduced.image is not None and reduced.image.mode == "RGB"
    assert reduced.image.size == (512, 384) and reduced.full_size == (2048, 1536)
    box = np.asarray(full.image.reduce(4), dtype=float)
    assert np.abs(np.asarray(reduced.image, dtype=float) - box).mean() < 2


@pytest.mark.parametrize("params", [{}, {"progressive": True}, {"subsampling": 0}], ids=str)
def test_reduced_jpeg_decode_still_detects_truncation(params: dict[str, object]) -> None:
    data = _jpeg(_big_photo(), **params)
    for cut in (len(data) // 10, len(data) * 6 // 10, len(data) * 99 // 100, len(data) - 2):
        full = check_image(data[:cut])
        reduced = check_image(data[:cut], draft_size=lambda w, h: (w // 8, h // 8))
        assert reduced.reason is not None and reduced.reason.startswith("truncated"), (cut, reduced.reason)
        assert reduced.reason == full.reason
    assert check_image(data, draft_size=lambda w, h: (w // 8, h // 8)).ok


def test_reduced_decode_of_exif_rotated_jpeg_reports_the_upright_full_size() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _jpeg(_big_photo((640, 400)), exif=exif)
    full = check_image(data)
    reduced = check_image(data, draft_size=lambda w, h: (w // 2, h // 2))
    assert full.image is not None and full.image.size == full.full_size == (400, 640)
    assert reduced.image is not None and reduced.image.size == (200, 320) and reduced.full_size == (400, 640)


def test_draft_size_leaves_other_formats_whole() -> None:
    data = _png(_big_photo((600, 400)))
    check = check_image(data, draft_size=lambda w, h: (w // 8, h // 8))
    assert check.ok and check.image is not None and check.image.size == check.full_size == (600, 400)
    assert (
        check_image(demo_data.bad_png_crc(), draft_size=lambda w, h: (1, 1)).reason
        == check_image(demo_data.bad_png_crc()).reason
    )


def test_cmyk_jpeg_reduced_decode_is_rgb() -> None:
    data = _jpeg(_big_photo((1024, 768)).convert("CMYK"))
    check = check_image(data, draft_size=lambda w, h: (w // 2, h // 2))
    assert check.ok and check.image is not None
    assert (check.image.mode, check.image.size, check.full_size) == ("RGB", (512, 384), (1024, 768))
