"""Write the selected video frames as images, reading only the GOPs that hold them.

Per video, the file is opened for ranged reads (small blocks), PyAV reads the container header, and for each
selected frame it seeks to the keyframe at or before it and decodes forward
(:meth:`~lightly_tasks.video.PyAVReader.frames_at`); consecutive selected frames of one GOP share the decode.
So the bytes read are the header plus the selected GOPs, not the whole video.
"""

from __future__ import annotations

import io
import logging
import posixpath

import numpy as np
import pandas as pd
from PIL import Image

from lightly_tasks import artifacts
from lightly_tasks.progress import Progress
from lightly_tasks.ranged_file import open_counted
from lightly_tasks.storage import ByteCounter, Location, safe_key
from lightly_tasks.video import PyAVReader

log = logging.getLogger(__name__)

DUMP_BUFFER_BYTES = 16 * 2**10
"""PyAV's I/O buffer while seeking for frames."""
EXTENSIONS = {"png": ".png", "jpeg": ".jpg"}


def dump_block_bytes(size: int | None) -> int:
    """Ranged-read size for seeking in a video of ``size`` bytes: 1/32 of it, between 16 KiB and 1 MiB."""
    return min(2**20, max(16 * 2**10, (size or 0) // 32))


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


def dump_name(frame_key: str, fmt: str) -> str:
    """The file name a frame is dumped under: its sample key, with the format's extension."""
    return posixpath.splitext(frame_key)[0] + EXTENSIONS[fmt]


def dump_frames(
    datasource: Location,
    output: Location,
    selected: pd.DataFrame,
    videos: pd.DataFrame,
    counter: ByteCounter,
    *,
    fmt: str = "png",
    image_size: int | None = None,
) -> int:
    """Write the frames in ``selected`` (key, video_key, frame_pts) to ``output``; return how many it wrote.

    ``videos`` has per video ``key``, ``size`` and ``keyframes`` (keyframe pts of the decoding pass). A frame
    that cannot be decoded again is logged and skipped. Frame keys that would escape the output root raise
    ValueError before anything is read.
    """
    names = {key: safe_key(dump_name(key, fmt)) for key in selected["key"]}
    info = videos.set_index("key")
    progress = Progress("dump frames", len(selected), unit="frames", logger=log)
    written = 0
    for video_key, frames in selected.groupby("video_key", sort=True):
        size = int(info.at[video_key, "size"]) if "size" in info else None
        keyframes = info.at[video_key, "keyframes"] if "keyframes" in info else []
        keyframes = [] if keyframes is None else [int(k) for k in keyframes]
        key_of = dict(zip(frames["frame_pts"].astype("int64"), frames["key"], strict=True))
        with open_counted(
            datasource,
            str(video_key),
            size=size,
            counter=counter,
            block_size=dump_block_bytes(size),
            max_blocks=4,
        ) as f:
            reader = PyAVReader(f, buffer_size=DUMP_BUFFER_BYTES, threads=False)
            try:
                for pts, rgb in reader.frames_at(sorted(key_of), keyframes):
                    if rgb is None:
                        log.warning("dump: frame %s could not be decoded again; skipped", key_of[pts])
                        continue
                    artifacts.write_bytes(
                        output, names[key_of[pts]], encode_frame(rgb, fmt=fmt, image_size=image_size)
                    )
                    written += 1
                    progress.update()
            finally:
                reader.close()
    progress.finish()
    return written
