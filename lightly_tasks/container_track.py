"""The facts our own container-header parsers (MP4/MOV, AVI) give about a video's first video track."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ContainerTrack:
    """A video track as its container header describes it: ``frames`` is its exact frame count."""

    frames: int
    fps: float | None
    duration: float | None
    codec: str
    width: int
    height: int
