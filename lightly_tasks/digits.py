"""scikit-learn's bundled handwritten digits as a small labeled image set, for measuring embedding quality.

``sklearn/datasets/data/digits.csv.gz`` ships inside the scikit-learn wheel (1,797 grey 8x8 images with 17
levels, labels 0-9); it is read as a file, without importing scikit-learn, and upscaled to RGB images.
"""

from __future__ import annotations

import gzip
from importlib.util import find_spec
from pathlib import Path

import numpy as np
from PIL import Image

N_DIGITS = 1797


def _digits_file() -> Path:
    spec = find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("scikit-learn is not installed: its bundled digits.csv.gz is needed")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"


def load_digits(
    size: int = 32, *, n: int | None = None, varied: bool = False, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` digits as (N, size, size, 3) uint8 RGB images (bilinear upscale) and (N,) int64 labels.

    ``varied`` adds the nuisance that real photos have and the 8x8 originals lack: each digit is drawn at a
    random scale (55-100 % of the side) and position on a black canvas (per image, from ``seed``). Plain digits
    are so uniform that a kNN on pixels (or on random-init features) classifies ~98 % of them, which leaves
    nothing for a representation to add. The ink stays white: a per-image colour or grey level that the
    augmentations do not randomise is a shortcut that contrastive training learns instead of the shape.
    """
    with gzip.open(_digits_file(), "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float32, max_rows=n)
    pixels = (table[:, :64].reshape(-1, 8, 8) * (255.0 / 16.0)).round().astype(np.uint8)
    labels = table[:, 64].astype(np.int64)
    if not varied:
        grey = np.stack([_resize(p, size) for p in pixels])
        return np.repeat(grey[..., None], 3, axis=-1), labels
    rng = np.random.default_rng(seed)
    images = np.empty((len(pixels), size, size, 3), dtype=np.uint8)
    for i, p in enumerate(pixels):
        side = int(rng.uniform(0.55, 1.0) * size)
        x, y = rng.integers(0, size - side + 1, size=2)
        mask = np.zeros((size, size, 1), dtype=np.float32)
        mask[y : y + side, x : x + side, 0] = _resize(p, side) / 255.0
        images[i] = np.round(255.0 * mask).astype(np.uint8)
    return images, labels


def _resize(grey: np.ndarray, side: int) -> np.ndarray:
    return np.asarray(Image.fromarray(grey).resize((side, side), Image.Resampling.BILINEAR))


def write_digits_folder(out_dir: Path, images: np.ndarray) -> list[str]:
    """Write (N, S, S, 3) uint8 images as PNG files ``digit-00000.png`` ...; returns their keys in order."""
    out_dir.mkdir(parents=True, exist_ok=True)
    keys = [f"digit-{i:05d}.png" for i in range(len(images))]
    for key, image in zip(keys, images, strict=True):
        Image.fromarray(image).save(out_dir / key, compress_level=1)
    return keys
