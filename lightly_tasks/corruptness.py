"""Image integrity verdicts: decide whether an object's bytes are a usable image, and why not.

`check_image` is the one place where untrusted bytes meet Pillow. It never raises on bad data and never
changes Pillow's global state, so the corruptness stage can call it from many threads at once.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS: int = 89_478_485
"""Largest width*height accepted; the same figure as Pillow's default `Image.MAX_IMAGE_PIXELS`."""

_ALPHA_MODES = frozenset({"LA", "PA", "RGBA", "RGBa", "P"})
_DIRECT_TO_RGB_MODES = frozenset({"1", "L", "RGBX", "CMYK", "YCbCr"})
_HIGH_DEPTH_MODES = frozenset({"I", "F", "I;16", "I;16L", "I;16B", "I;16N"})


@dataclass(frozen=True)
class ImageCheck:
    """The verdict on one object's bytes.

    `reason` is None when `ok`; otherwise a short human reason whose prefix before ':' is stable and can be
    counted in reports ("empty file", "not an image", "truncated", "bad PNG CRC", "decompression bomb",
    "unsupported mode X", "decode error"). When `ok`, `image` is fully loaded, EXIF orientation applied,
    8-bit RGB, and independent of the input bytes.
    """

    ok: bool
    reason: str | None
    image: Image.Image | None
    format: str | None
    original_mode: str | None


class UnsupportedModeError(ValueError):
    """Raised by `to_rgb` for a Pillow mode that has no sensible RGB rendering (LAB, HSV, ...)."""


def content_hash(data: bytes) -> str:
    """Return the sha256 hex digest of an object's bytes, the key for exact-duplicate removal."""
    return hashlib.sha256(data).hexdigest()


def check_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, verify: bool = True) -> ImageCheck:
    """Decode `data` completely and return a verdict; any failure becomes `ok=False` with a reason.

    Steps: identify the format from the header; reject a declared width*height above `max_pixels` before
    any pixel is decoded (decompression bombs); `verify()` (checks PNG chunk CRCs); reopen and `load()`
    the first frame (a truncated file fails here because `ImageFile.LOAD_TRUNCATED_IMAGES` is left False);
    apply the EXIF orientation; convert to 8-bit RGB (see `to_rgb`). With ``verify=False`` (the config's
    ``enable_corruptness_check: false``) the `verify()` pass is skipped: faster, but a PNG whose pixels decode
    despite a bad chunk CRC is accepted.

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
        with Image.open(io.BytesIO(data)) as probe:
            fmt, mode = probe.format, probe.mode
            width, height = probe.size
            if width * height > max_pixels:
                return _corrupt(
                    f"decompression bomb: {width}x{height} = {width * height} pixels > limit {max_pixels}",
                    fmt,
                    mode,
                )
            if verify:
                probe.verify()
        with Image.open(io.BytesIO(data)) as decoded:
            decoded.load()
            rgb = to_rgb(_exif_transposed(decoded))
    except UnsupportedModeError as exc:
        return _corrupt(str(exc), fmt, mode)
    except Exception as exc:
        return _corrupt(_reason(exc, fmt), fmt, mode)
    return ImageCheck(ok=True, reason=None, image=rgb, format=fmt, original_mode=mode)


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


def _exif_transposed(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag; a malformed EXIF block leaves the (valid) pixels as they are."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception:
        return image


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
