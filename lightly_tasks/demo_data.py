"""A real image folder with deliberately broken files, built offline from photos shipped inside wheels.

The photos come from scikit-image's bundled `skimage/data` files (only those inside the wheel, none that
`skimage.data` would download) and scikit-learn's `sklearn/datasets/images` (china.jpg, flower.jpg). They
are read as files, without importing either library. Every output is deterministic for a seed: fixed
JPEG quality, no timestamps, and Python's `random.Random(seed).random()` as the only randomness.

Used by `make demo` (`python -m lightly_tasks.demo_data OUT_DIR [--n N] [--seed S] [--json]`) and by the
tests, which can also take each broken or odd file on its own from the functions below.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import io
import json
import random
import struct
import sys
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib.util import find_spec
from pathlib import Path

import numpy as np
from PIL import Image

JPEG_QUALITY = 90
PNG_COMPRESS_LEVEL = 1
"""Fast zlib level: the folder is rebuilt by tests and `make demo`, and its size hardly matters."""
MIN_SIDE, MAX_SIDE = 96, 640

SOURCES: dict[str, tuple[str, str, str]] = {
    "astronaut": ("skimage", "data/astronaut.png", "people"),
    "camera": ("skimage", "data/camera.png", "people"),
    "chelsea": ("skimage", "data/chelsea.png", "animals/cats"),
    "coffee": ("skimage", "data/coffee.png", "objects/kitchen"),
    "rocket": ("skimage", "data/rocket.jpg", "objects/vehicles"),
    "motorcycle": ("skimage", "data/motorcycle_left.png", "objects/vehicles"),
    "clock": ("skimage", "data/clock_motion.png", "objects"),
    "coins": ("skimage", "data/coins.png", "objects"),
    "hubble": ("skimage", "data/hubble_deep_field.jpg", "space"),
    "moon": ("skimage", "data/moon.png", "space"),
    "ihc": ("skimage", "data/ihc.png", "science"),
    "retina": ("skimage", "data/retina.jpg", "science"),
    "cell": ("skimage", "data/cell.png", "science"),
    "brick": ("skimage", "data/brick.png", "textures"),
    "grass": ("skimage", "data/grass.png", "textures"),
    "gravel": ("skimage", "data/gravel.png", "textures"),
    "page": ("skimage", "data/page.png", "documents"),
    "text": ("skimage", "data/text.png", "documents"),
    "china": ("sklearn", "datasets/images/china.jpg", "places"),
    "flower": ("sklearn", "datasets/images/flower.jpg", "nature/été 2024"),
}
"""Photo name -> (package, file inside the package, demo sub-folder). One folder has a space and an 'é'."""


@dataclass
class DemoManifest:
    """What `build_demo_folder` wrote, as keys relative to its folder ('/'-separated)."""

    real: list[str] = field(default_factory=list)
    duplicates: list[tuple[str, str]] = field(default_factory=list)
    broken: dict[str, str] = field(default_factory=dict)
    convertible: list[str] = field(default_factory=list)

    def all_keys(self) -> list[str]:
        """Every key written, sorted."""
        keys = [*self.real, *(dup for dup, _ in self.duplicates), *self.broken, *self.convertible]
        return sorted(keys)


@functools.cache
def source_image(name: str) -> Image.Image:
    """Load one bundled photo from `SOURCES` as an RGB or L image (callers must not modify it)."""
    package, relative, _ = SOURCES[name]
    spec = find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not installed; the demo images come from its wheel")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    with Image.open(path) as image:
        image.load()
        return image if image.mode in ("RGB", "L") else image.convert("RGB")


def zero_byte() -> bytes:
    """An empty object (expected reason 'empty file')."""
    return b""


def truncated_jpeg() -> bytes:
    """A real JPEG photo cut off at 60 % of its bytes (expected reason 'truncated')."""
    data = _encode(source_image("chelsea"), "JPEG")
    return data[: len(data) * 6 // 10]


def not_an_image() -> bytes:
    """Plain text that a user saved under a .jpg name (expected reason 'not an image')."""
    return b"These are my holiday notes, not a picture.\nDay 1: arrived late, rain.\n"


def bad_png_crc() -> bytes:
    """A real PNG whose first IDAT chunk has a wrong CRC (expected reason 'bad PNG CRC')."""
    data = bytearray(_encode(_crop(source_image("coffee"), (100, 50, 260, 170)), "PNG"))
    start = data.index(b"IDAT") - 4
    length = struct.unpack(">I", data[start : start + 4])[0]
    crc_at = start + 8 + length
    data[crc_at + 3] ^= 0xFF
    return bytes(data)


@functools.cache
def decompression_bomb() -> bytes:
    """A valid ~12 KB PNG of a blank 10000x10000 1-bit image: 100 M pixels (expected 'decompression bomb')."""
    width = height = 10_000
    row = b"\x00" * (1 + width // 8)
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"".join(
        (
            b"\x89PNG\r\n\x1a\n",
            _png_chunk(b"IHDR", header),
            _png_chunk(b"IDAT", zlib.compress(row * height, 9)),
            _png_chunk(b"IEND", b""),
        )
    )


def unsupported_mode() -> bytes:
    """A real photo stored as a CIE L*a*b* TIFF, a mode with no sensible RGB rendering.

    Expected reason: 'unsupported mode LAB'. The ICC profile that Pillow's conversion attaches is dropped
    because it carries a creation timestamp.
    """
    lab = _crop(source_image("china"), (200, 120, 296, 184)).convert("LAB")
    lab.info.pop("icc_profile", None)
    return _encode(lab, "TIFF")


def cmyk_jpeg() -> bytes:
    """A real photo as a CMYK JPEG (accepted, converted to RGB)."""
    return _encode(_crop(source_image("flower"), (100, 40, 420, 280)).convert("CMYK"), "JPEG")


def gray16_png() -> bytes:
    """A real photo as a 16-bit greyscale PNG using values 1000..39250 (accepted, range stretched)."""
    values = np.asarray(_crop(source_image("camera"), (64, 32, 448, 320))).astype(np.uint16)
    return _encode(Image.fromarray(1000 + values * 150), "PNG")


def palette_png() -> bytes:
    """A real photo quantised to a 64-colour palette PNG (accepted)."""
    photo = _crop(source_image("astronaut"), (120, 0, 440, 320))
    return _encode(photo.quantize(64, method=Image.Quantize.FASTOCTREE), "PNG")


def rgba_png() -> bytes:
    """A real photo with a left-to-right alpha ramp as an RGBA PNG (accepted, composited on white)."""
    photo = _crop(source_image("chelsea"), (100, 20, 400, 260))
    ramp = np.tile(np.linspace(0, 255, photo.width).astype(np.uint8), (photo.height, 1))
    rgba = photo.convert("RGBA")
    rgba.putalpha(Image.fromarray(ramp))
    return _encode(rgba, "PNG")


def gray_jpeg() -> bytes:
    """A real greyscale photo as a single-channel JPEG (accepted)."""
    return _encode(_crop(source_image("moon"), (96, 96, 416, 352)), "JPEG")


def exif_rotated_jpeg() -> bytes:
    """A 320x200 JPEG with EXIF orientation 6; it displays upright as 200x320 (accepted, size swapped)."""
    upright = _crop(source_image("rocket"), (100, 80, 300, 400))
    exif = Image.Exif()
    exif[0x0112] = 6
    return _encode(upright.transpose(Image.Transpose.ROTATE_90), "JPEG", exif=exif)


def animated_gif() -> bytes:
    """A three-frame animated GIF of real crops (accepted, the first frame is used)."""
    photo = source_image("coffee")
    crops = [_crop(photo, (x, 60, x + 200, 210)) for x in (40, 140, 240)]
    frames = [crop.quantize(128, method=Image.Quantize.FASTOCTREE) for crop in crops]
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:], duration=200, loop=0)
    return out.getvalue()


BROKEN: dict[str, tuple[Callable[[], bytes], str]] = {
    "animals/empty.jpg": (zero_byte, "empty file"),
    "animals/cats/chelsea_truncated.jpg": (truncated_jpeg, "truncated"),
    "documents/holiday notes.jpg": (not_an_image, "not an image"),
    "objects/kitchen/coffee_bad_crc.png": (bad_png_crc, "bad PNG CRC"),
    "space/deep_field_huge.png": (decompression_bomb, "decompression bomb"),
    "places/china_lab.tif": (unsupported_mode, "unsupported mode"),
}
"""Demo key -> (bytes factory, expected prefix of `check_image`'s reason)."""

CONVERTIBLE: dict[str, Callable[[], bytes]] = {
    "formats/flower_cmyk.jpg": cmyk_jpeg,
    "formats/camera_16bit.png": gray16_png,
    "formats/astronaut_palette.png": palette_png,
    "formats/chelsea_alpha.png": rgba_png,
    "formats/moon_gray.jpg": gray_jpeg,
    "formats/rocket_exif_rotated.jpg": exif_rotated_jpeg,
    "formats/coffee_animated.gif": animated_gif,
}
"""Demo key -> bytes factory of an unusual but valid image that must be accepted."""


def build_demo_folder(out_dir: Path, *, n_images: int = 48, seed: int = 0) -> DemoManifest:
    """Write the demo folder under `out_dir` and return what it holds.

    `n_images` distinct real photos (crops, scales and flips of the bundled photos, JPEG and PNG, long
    side 96..640 px) in nested sub-folders, one byte-exact duplicate of the first of them, the `BROKEN`
    files and the `CONVERTIBLE` oddities. Existing files at the same keys are overwritten; nothing else in
    `out_dir` is touched. The same arguments always produce the same bytes.
    """
    manifest = DemoManifest()
    variants = _variants(n_images, random.Random(f"demo:{seed}"), key_prefix="")
    for key, data in variants:
        _write(out_dir, key, data)
        manifest.real.append(key)
    original_key, original_data = variants[0]
    parent, _, name = original_key.rpartition("/")
    duplicate_key = f"{parent}/copy of {name}" if parent else f"copy of {name}"
    _write(out_dir, duplicate_key, original_data)
    manifest.duplicates.append((duplicate_key, original_key))
    for key, (factory, prefix) in BROKEN.items():
        _write(out_dir, key, factory())
        manifest.broken[key] = prefix
    for key, factory in CONVERTIBLE.items():
        _write(out_dir, key, factory())
        manifest.convertible.append(key)
    return manifest


def add_images(out_dir: Path, *, n_images: int, seed: int, subdir: str = "batch2") -> list[str]:
    """Write `n_images` more real photos under `out_dir/subdir` for a second run; return their keys.

    They use a random stream separate from `build_demo_folder`'s (other crops, scales and flips), so they
    are new content to a datapool that has seen the first batch. Deterministic for the arguments.
    """
    variants = _variants(n_images, random.Random(f"batch:{subdir}:{seed}"), key_prefix=f"{subdir}/")
    for key, data in variants:
        _write(out_dir, key, data)
    return [key for key, _ in variants]


def _variants(n_images: int, rng: random.Random, *, key_prefix: str) -> list[tuple[str, bytes]]:
    """Make `n_images` distinct (key, encoded bytes) crops of the sources, cycling through them."""
    names = sorted(SOURCES)
    rng.shuffle(names)
    seen: set[str] = set()
    variants: list[tuple[str, bytes]] = []
    while len(variants) < n_images:
        name = names[len(variants) % len(names)]
        photo = source_image(name)
        width, height = photo.size
        crop_w = max(8, round(width * (0.45 + 0.55 * rng.random())))
        crop_h = max(8, round(height * (0.45 + 0.55 * rng.random())))
        left = round((width - crop_w) * rng.random())
        top = round((height - crop_h) * rng.random())
        longest = min(MAX_SIDE, round(1.25 * max(crop_w, crop_h)))
        target_long = MIN_SIDE + round((max(longest, MIN_SIDE) - MIN_SIDE) * rng.random())
        scale = target_long / max(crop_w, crop_h)
        size = (max(1, round(crop_w * scale)), max(1, round(crop_h * scale)))
        image = photo.resize(size, Image.Resampling.LANCZOS, box=(left, top, left + crop_w, top + crop_h))
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        fmt, ext = ("JPEG", "jpg") if rng.random() < 0.6 else ("PNG", "png")
        data = _encode(image, fmt)
        digest = hashlib.sha256(data).hexdigest()
        if digest in seen:
            continue
        seen.add(digest)
        folder = SOURCES[name][2]
        key = f"{key_prefix}{folder}/{name}_{len(variants):03d}.{ext}"
        variants.append((key, data))
    return variants


def _crop(image: Image.Image, box: tuple[int, int, int, int]) -> Image.Image:
    """Crop `box` (left, top, right, bottom), clamped to the image."""
    left, top, right, bottom = box
    return image.crop((max(0, left), max(0, top), min(image.width, right), min(image.height, bottom)))


def _encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    """Encode deterministically (fixed JPEG quality and PNG level, Pillow writes no timestamps)."""
    out = io.BytesIO()
    if fmt == "JPEG":
        params.setdefault("quality", JPEG_QUALITY)
    if fmt == "PNG":
        params.setdefault("compress_level", PNG_COMPRESS_LEVEL)
    image.save(out, fmt, **params)
    return out.getvalue()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    """One PNG chunk: length, type, payload, CRC-32 of type + payload."""
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _write(out_dir: Path, key: str, data: bytes) -> None:
    path = out_dir / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def main(argv: list[str] | None = None) -> int:
    """CLI: build the demo folder and print a one-line summary (or the whole manifest with --json)."""
    parser = argparse.ArgumentParser(
        prog="python -m lightly_tasks.demo_data", description="Write the demo image folder to OUT_DIR."
    )
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--n", type=int, default=48, help="number of real images (default 48)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the manifest as JSON")
    args = parser.parse_args(argv)
    manifest = build_demo_folder(args.out_dir, n_images=args.n, seed=args.seed)
    if args.json:
        json.dump(asdict(manifest), sys.stdout, ensure_ascii=False, indent=1)
        sys.stdout.write("\n")
    else:
        print(
            f"wrote {len(manifest.real)} real images, {len(manifest.duplicates)} exact duplicate, "
            f"{len(manifest.broken)} broken and {len(manifest.convertible)} unusual-but-valid files "
            f"to {args.out_dir}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
