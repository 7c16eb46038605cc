"""Image integrity verdicts: decide whether an object's bytes are a usable image, and why not.

`check_image` is the one place where untrusted bytes meet Pillow. It never raises on bad data and never
changes Pillow's global state, so the corruptness stage can call it from many threads at once.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import ExifTags, Image, ImageFile, UnidentifiedImageError

DEFAULT_MAX_PIXELS: int = 89_478_485
"""Largest width*height accepted; the same figure as Pillow's default `Image.MAX_IMAGE_PIXELS`."""

_ALPHA_MODES = frozenset({"LA", "PA", "RGBA", "RGBa", "P"})
_DIRECT_TO_RGB_MODES = frozenset({"1", "L", "RGBX", "CMYK", "YCbCr"})
_HIGH_DEPTH_MODES = frozenset({"I", "F", "I;16", "I;16L", "I;16B", "I;16N"})
_ORIENTATIONS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
"""EXIF orientation -> the transposition that shows the image upright, as `ImageOps.exif_transpose`."""
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})


@dataclass(frozen=True)
class ImageCheck:
    """The verdict on one object's bytes.

    `reason` is None when `ok`; otherwise a short human reason whose prefix before ':' is stable and can be
    counted in reports ("empty file", "not an image", "truncated", "bad PNG CRC", "decompression bomb",
    "unsupported mode X", "decode error"). When `ok`, `image` is fully loaded, EXIF orientation applied,
    8-bit RGB, and independent of the input bytes. `full_size` is the (width, height) of the image at full
    resolution after EXIF orientation, as declared by the header: `image.size`, unless `check_image` was asked
    for a reduced JPEG decode (`draft_size`); None when not `ok`.
    """

    ok: bool
    reason: str | None
    image: Image.Image | None
    format: str | None
    original_mode: str | None
    full_size: tuple[int, int] | None = None


class UnsupportedModeError(ValueError):
    """Raised by `to_rgb` for a Pillow mode that has no sensible RGB rendering (LAB, HSV, ...)."""


def content_hash(data: bytes) -> str:
    """Return the sha256 hex digest of an object's bytes, the key for exact-duplicate removal."""
    return hashlib.sha256(data).hexdigest()


def check_image(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    verify: bool = True,
    draft_size: Callable[[int, int], tuple[int, int]] | None = None,
) -> ImageCheck:
    """Decode `data` completely and return a verdict; any failure becomes `ok=False` with a reason.

    Steps: identify the format from the header; reject a declared width*height above `max_pixels` before
    any pixel is decoded (decompression bombs); `verify()` (checks PNG chunk CRCs); reopen and `load()`
    the first frame (a truncated file fails here because `ImageFile.LOAD_TRUNCATED_IMAGES` is left False);
    apply the EXIF orientation; convert to 8-bit RGB (see `to_rgb`). With ``verify=False`` (the config's
    ``enable_corruptness_check: false``) the `verify()` pass is skipped: faster, but a PNG whose pixels decode
    despite a bad chunk CRC is accepted. Formats whose `verify()` checks nothing (JPEG, GIF, ...: Pillow only
    overrides it for PNG) are decoded from the already opened header instead of being opened twice.

    ``draft_size``, when given, is called with the declared (width, height) in stored orientation and returns
    the smallest (width, height) the caller needs; a JPEG is then decoded with libjpeg's DCT scaling at the
    smallest scale (1/2, 1/4 or 1/8, Pillow's `Image.draft`) that still covers it, and `image` is that smaller
    image while `full_size` keeps the declared size. The whole entropy-coded stream is still read and
    Huffman-decoded, so a truncated or corrupt JPEG fails exactly as in a full decode. Other formats ignore
    it.

    Pillow's own bomb check (module-level `Image.MAX_IMAGE_PIXELS`) still applies and is not changed here:
    above twice that limit Pillow refuses the image whatever `max_pixels` says (reported as a decompression
    bomb); between once and twice it emits a DecompressionBombWarning, left unfiltered because
    `warnings.catch_warnings` is not thread-safe.
    """
    if not data:
        return _corrupt("empty file")
    fmt: str | None = None
    mode: str | None = None
    try:
        decoded = probe = Image.open(io.BytesIO(data))
        fmt, mode = probe.format, probe.mode
        width, height = probe.size
        if width * height > max_pixels:
            return _corrupt(
                f"decompression bomb: {width}x{height} = {width * height} pixels > limit {max_pixels}",
                fmt,
                mode,
            )
        if verify and type(probe).verify is not ImageFile.ImageFile.verify:
            probe.verify()
            decoded = Image.open(io.BytesIO(data))
        if draft_size is not None:
            decoded.draft(None, draft_size(width, height))
        decoded.load()
        oriented, swapped = _exif_oriented(decoded)
        rgb = oriented if oriented is not decoded and oriented.mode == "RGB" else to_rgb(oriented)
    except UnsupportedModeError as exc:
        return _corrupt(str(exc), fmt, mode)
    except Exception as exc:
        return _corrupt(_reason(exc, fmt), fmt, mode)
    full_size = (height, width) if swapped else (width, height)
    return ImageCheck(ok=True, reason=None, image=rgb, format=fmt, original_mode=mode, full_size=full_size)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert a loaded Pillow image of any sensible mode to a new 8-bit RGB image.

    - 1, L, RGBX, CMYK, YCbCr: Pillow's conversion (CMYK without ICC colour management).
    - P, PA, LA, RGBA, RGBa: through RGBA, then composited on a white background, because most
      viewers and labelling tools show transparent pixels as white, and a black fill would invent dark
      content that skews luminance and embeddings.
    - I;16*, I, F (16/32-bit grey): the real value range [min, max] of the finite pixels is scaled
      linearly to [0, 255]; a constant image becomes black. NaN/inf pixels count as the minimum.
    - anything else (LAB, HSV, ...): `UnsupportedModeError`.
    """
    mode = image.mode
    if mode == "RGB":
        return image.copy()
    if mode in _DIRECT_TO_RGB_MODES:
        return image.convert("RGB")
    if mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode in _HIGH_DEPTH_MODES:
        return _stretch_to_rgb(np.asarray(image))
    raise UnsupportedModeError(f"unsupported mode {mode}")


def _stretch_to_rgb(values: np.ndarray) -> Image.Image:
    """Scale a (H, W) array of any numeric dtype to 8 bit over its finite range; return (H, W) RGB."""
    grey = values.astype(np.float64)
    finite = np.isfinite(grey)
    if not finite.any():
        grey = np.zeros_like(grey)
    else:
        lo, hi = float(grey[finite].min()), float(grey[finite].max())
        grey = np.where(finite, grey, lo)
        grey = (grey - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(grey)
    grey8 = np.clip(np.rint(grey), 0, 255).astype(np.uint8)
    return Image.fromarray(np.repeat(grey8[:, :, None], 3, axis=2))


def _exif_oriented(image: Image.Image) -> tuple[Image.Image, bool]:
    """Apply the EXIF orientation tag; return the upright image and whether width and height swapped.

    The same transpositions as `ImageOps.exif_transpose`, without its copy of an already upright image or its
    rewrite of the EXIF/XMP info. Returns `image` itself when it is upright; a malformed EXIF block leaves
    the (valid) pixels as they are.
    """
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
        method = _ORIENTATIONS.get(orientation)
        if method is None:
            return image, False
        return image.transpose(method), orientation in _SWAPPING_ORIENTATIONS
    except Exception:
        return image, False


def _reason(exc: BaseException, fmt: str | None) -> str:
    """Map an exception raised while identifying, verifying or decoding to a reason with a stable prefix."""
    message = str(exc) or type(exc).__name__
    if isinstance(exc, Image.DecompressionBombError | Image.DecompressionBombWarning):
        return f"decompression bomb: {message}"
    if isinstance(exc, UnidentifiedImageError):
        return "not an image: cannot identify image file"
    lowered = message.lower()
    if fmt == "PNG" and ("crc" in lowered or "checksum" in lowered):
        return f"bad PNG CRC: {message}"
    if "truncated" in lowered or isinstance(exc, EOFError):
        return f"truncated: {message}"
    return f"decode error: {type(exc).__name__}: {message}"


def _corrupt(reason: str, fmt: str | None = None, mode: str | None = None) -> ImageCheck:
    return ImageCheck(ok=False, reason=reason, image=None, format=fmt, original_mode=mode)
