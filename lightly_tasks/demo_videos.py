"""Real, small test videos written with PyAV (H.264, H.265, VP9, MPEG-4 Part 2) and deliberately broken ones.

Frames are synthetic scenes (a gradient background whose hue follows a seeded random walk, with moving
rectangles), so consecutive frames are similar and different videos differ: embedding-based selection has
something to choose between. ``python -m lightly_tasks.demo_videos <folder>`` writes the demo set.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np

CODECS = {".mp4": "libx264", ".mov": "libx264", ".mkv": "libx264", ".webm": "libvpx-vp9", ".avi": "mpeg4"}
ENCODER_OPTIONS = {
    "libx264": {"preset": "veryfast", "bf": "2"},
    "libx265": {"preset": "veryfast", "bf": "2", "x265-params": "log-level=none"},
    "libvpx-vp9": {"deadline": "realtime", "cpu-used": "8"},
}
"""Fast presets; B-frames on, so decoders reorder frames as they do for real footage."""


def synthetic_frames(n_frames: int, width: int, height: int, seed: int, noise: float = 0.0) -> np.ndarray:
    """(n_frames, height, width, 3) uint8 frames of a slowly changing synthetic scene.

    ``noise`` > 0 overlays a Gaussian texture of that std which pans one pixel per frame (a camera moving
    over a detailed scene): realistic bitrates and large packets, for benchmarks and for tests that measure
    which byte ranges a reader touches.
    """
    rng = np.random.default_rng(seed)
    texture = rng.normal(0, noise, size=(height + n_frames, width + n_frames, 3)) if noise else None
    hue = np.cumsum(rng.normal(0, 6, size=(n_frames, 3)), axis=0) + rng.uniform(40, 200, size=3)
    ys, xs = np.mgrid[0:height, 0:width]
    boxes = rng.uniform(0, 1, size=(3, 4))
    frames = np.empty((n_frames, height, width, 3), np.uint8)
    for i in range(n_frames):
        base = hue[i][None, None, :] + 60 * (xs / width)[..., None] - 30 * (ys / height)[..., None]
        image = np.clip(base, 0, 255)
        for b, (x0, y0, vx, vy) in enumerate(boxes):
            cx = int((x0 + 0.02 * (vx + 0.5) * i) % 1.0 * width)
            cy = int((y0 + 0.015 * (vy + 0.5) * i) % 1.0 * height)
            image[max(cy - height // 8, 0) : cy + height // 8, max(cx - width // 8, 0) : cx + width // 8] = (
                (b * 90 + 40) % 256,
                (255 - b * 70) % 256,
                (b * 50 + 120) % 256,
            )
        if texture is not None:
            image = np.clip(image + texture[i : i + height, i : i + width], 0, 255)
        frames[i] = image.astype(np.uint8)
    return frames


def write_video(
    path: Path,
    *,
    n_frames: int = 40,
    width: int = 64,
    height: int = 48,
    fps: int = 30,
    gop: int = 10,
    codec: str | None = None,
    faststart: bool = False,
    seed: int = 0,
    noise: float = 0.0,
) -> Path:
    """Encode ``n_frames`` synthetic frames to ``path``; the container follows the suffix.

    ``codec`` defaults by suffix (H.264 for .mp4/.mov/.mkv, VP9 for .webm, MPEG-4 Part 2 for .avi);
    ``faststart`` puts an MP4's ``moov`` box before ``mdat``. ``n_frames=0`` writes a frameless container.
    ``noise``: see :func:`synthetic_frames`.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    codec = codec or CODECS[path.suffix.lower()]
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = gop
        stream.codec_context.options = ENCODER_OPTIONS.get(codec, {})
        container.start_encoding()
        for image in synthetic_frames(n_frames, width, height, seed, noise):
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def packet_span(path: Path, frame_index: int) -> tuple[int, int]:
    """(byte offset, size) of the packet of the video frame with presentation index ``frame_index``."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        packets = sorted((p.pts, p.pos, p.size) for p in container.demux(stream) if p.size)
    _, pos, size = packets[frame_index]
    return int(pos), int(size)


def damage_frame(path: Path, frame_index: int) -> None:
    """Overwrite the payload of frame ``frame_index``'s packet (after its 4-byte NAL length) with noise."""
    pos, size = packet_span(path, frame_index)
    data = bytearray(path.read_bytes())
    data[pos + 4 : pos + size] = bytes((b * 7 + 13) & 0xFF for b in data[pos + 4 : pos + size])
    path.write_bytes(bytes(data))


def truncate(path: Path, fraction: float = 0.5) -> None:
    """Cut ``path`` to ``fraction`` of its bytes, as an interrupted upload would."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


@dataclass
class DemoVideos:
    """The demo folder's videos by role (keys relative to the folder)."""

    good: dict[str, int] = field(default_factory=dict)
    """key -> frame count"""
    broken: dict[str, str] = field(default_factory=dict)
    """key -> the reason prefix its verdict must start with"""
    damaged: dict[str, int] = field(default_factory=dict)
    """key -> index of the damaged frame (the video itself stays usable)"""
    truncated: dict[str, int] = field(default_factory=dict)
    """key -> header frame count of a faststart MP4 cut in half (its first frames stay usable)"""


def build_demo_videos(
    folder: Path, *, n_frames: int = 40, width: int = 64, height: int = 48, noise: float = 0.0
) -> DemoVideos:
    """Write the demo set: good videos in every container, and broken ones with the verdict each must get.

    ``noise`` (see :func:`synthetic_frames`) gives the videos realistic bitrates, for byte-ratio checks.
    """
    demo = DemoVideos()
    good = [
        ("cams/street_01.mp4", {"faststart": True}),
        ("cams/street_02.mp4", {}),
        ("drone/field.mkv", {}),
        ("drone/lake.webm", {}),
        ("archive/tape.avi", {}),
        ("archive/clip.mov", {}),
    ]
    for seed, (key, options) in enumerate(good):
        write_video(folder / key, n_frames=n_frames, width=width, height=height, seed=seed, noise=noise, **options)
        demo.good[key] = n_frames
    damaged = "cams/damaged.mp4"
    write_video(folder / damaged, n_frames=n_frames, width=width, height=height, seed=20, faststart=True, noise=noise)
    damage_frame(folder / damaged, n_frames // 2 + 1)
    demo.damaged[damaged] = n_frames // 2 + 1
    truncated = "cams/truncated.mp4"
    write_video(
        folder / truncated, n_frames=n_frames, width=width, height=height, seed=21, faststart=True, noise=noise
    )
    truncate(folder / truncated)
    demo.truncated[truncated] = n_frames
    cut_moov = "broken/cut_moov.mp4"
    write_video(folder / cut_moov, n_frames=n_frames, width=width, height=height, seed=22, noise=noise)
    truncate(folder / cut_moov)
    demo.broken[cut_moov] = "unreadable container"
    write_video(folder / "broken/empty.mp4", n_frames=0, width=width, height=height)
    demo.broken["broken/empty.mp4"] = "zero frames"
    (folder / "broken/garbage.mp4").write_bytes(np.random.default_rng(5).bytes(3000))
    demo.broken["broken/garbage.mp4"] = "unreadable container"
    return demo


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lightly_tasks.demo_videos", description=__doc__)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--frames", type=int, default=40)
    args = parser.parse_args(argv)
    demo = build_demo_videos(args.folder, n_frames=args.frames)
    total = sum(os.path.getsize(p) for p in args.folder.rglob("*") if p.is_file())
    print(
        f"wrote {len(demo.good)} good and {len(demo.broken) + len(demo.damaged) + len(demo.truncated)} "
        f"broken videos ({total} bytes) to {args.folder}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
