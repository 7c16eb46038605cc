"""Sample names of video frames, as the Lightly Worker writes them: ``{stem}-{index:06d}-{ext}.png``.

The video's folder stays in front (``cams/street_01.mp4`` frame 42 is ``cams/street_01-000042-mp4.png``), so
frames of equally named videos in different folders keep distinct keys.
"""

from __future__ import annotations

import posixpath
import re

_FRAME_NAME = re.compile(r"^(?P<stem>.+)-(?P<index>\d{6,})-(?P<ext>[^-/.]+)\.png$")


def frame_key(video_key: str, index: int) -> str:
    """The sample key of frame ``index`` (0-based, presentation order) of ``video_key``."""
    folder, name = posixpath.split(video_key)
    stem, ext = posixpath.splitext(name)
    return posixpath.join(folder, f"{stem}-{index:06d}-{ext.lstrip('.')}.png")


def parse_frame_key(key: str) -> tuple[str, int]:
    """(video key, frame index) of a key made by :func:`frame_key`; raises ValueError for any other key."""
    folder, name = posixpath.split(key)
    match = _FRAME_NAME.match(name)
    if not match:
        raise ValueError(f"{key!r} is not a frame name of the form <stem>-<index>-<ext>.png")
    video = f"{match['stem']}.{match['ext']}"
    return posixpath.join(folder, video), int(match["index"])
