"""What one decoded video frame becomes in the decoding pass: a content hash, image metadata and a thumbnail.

Kept apart from :mod:`lightly_tasks.video_decoding` so that the decoder child process
(:mod:`lightly_tasks.decoder_process`) can make the same results without the pass's table and cache code.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from lightly_tasks.metadata import working_copy, working_copy_metadata
from lightly_tasks.thumbnails import thumbnail
from lightly_tasks.video import Frame


@dataclass(frozen=True)
class FrameResult:
    """One sampled frame after the pass: ``thumbnail`` (S, S, 3) uint8 and metadata when it is good."""

    frame: Frame
    content_hash: str | None
    metadata: dict[str, Any]
    thumbnail: np.ndarray | None

    def without_pixels(self) -> FrameResult:
        """The same result without the full-resolution frame (what crosses a process boundary)."""
        return dataclasses.replace(self, frame=dataclasses.replace(self.frame, rgb=None))


def frame_result(frame: Frame, image_size: int) -> FrameResult:
    """Hash, metadata and thumbnail of a good frame, the way the image pass makes them.

    As for images, the metadata is measured on the working copy (box-downscaled to <= 512 px) and the
    thumbnail is resized from it when it is at least ``image_size`` on both sides.
    """
    if frame.rgb is None:
        return FrameResult(frame, None, {}, None)
    rgb = np.ascontiguousarray(frame.rgb)
    image = Image.fromarray(rgb)
    work = working_copy(image)
    height, width = rgb.shape[:2]
    return FrameResult(
        frame,
        hashlib.sha256(rgb.tobytes()).hexdigest(),
        working_copy_metadata(work, width=width, height=height, size_in_bytes=frame.packet_size),
        thumbnail(work if min(work.size) >= image_size else image, image_size),
    )
