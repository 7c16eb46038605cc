"""Frame count, rate, duration, codec and size of an AVI video from its ``hdrl`` list alone.

An AVI file is a RIFF tree: ``RIFF <size> "AVI "`` holds ``LIST <size> "hdrl"`` first, then ``LIST "movi"``
(the frames) and ``idx1``. Chunks are ``[id:4cc][size:u32 little-endian][body]``, padded to an even size.
``hdrl`` holds ``avih`` (the main header) and one ``LIST "strl"`` per stream: ``strh`` (type, rate, length in
frames) and ``strf`` (a ``BITMAPINFOHEADER`` for video). :func:`read_avi_header` reads the 12-byte file header,
the ``hdrl`` list header and the ``hdrl`` body (a few KB), so counting costs three small ranged reads instead
of FFmpeg's stream probe, which reads up to the first key frames.

The count is the video stream's ``strh.dwLength``, the number FFmpeg's AVI demuxer reports as the stream's
frame count too (for OpenDML files it is the whole file's length, across ``AVIX`` extensions). A file whose
header lacks it raises :class:`AviHeaderError`, and the caller falls back to FFmpeg's probe.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO

from lightly_tasks.container_track import ContainerTrack

MAX_HDRL_BYTES = 16 * 2**20
"""An ``hdrl`` larger than this is not read (OpenDML super indexes keep real ones to tens of KB)."""
CODEC_NAMES = {
    "FMP4": "mpeg4",
    "XVID": "mpeg4",
    "DIVX": "mpeg4",
    "DX50": "mpeg4",
    "MP4V": "mpeg4",
    "M4S2": "mpeg4",
    "H264": "h264",
    "X264": "h264",
    "AVC1": "h264",
    "DAVC": "h264",
    "HEVC": "hevc",
    "H265": "hevc",
    "HVC1": "hevc",
    "HEV1": "hevc",
    "MJPG": "mjpeg",
    "AVRN": "mjpeg",
    "DIV3": "msmpeg4v3",
    "MP43": "msmpeg4v3",
    "MP42": "msmpeg4v2",
    "VP80": "vp8",
    "VP90": "vp9",
    "AV01": "av1",
    "FFV1": "ffv1",
    "HFYU": "huffyuv",
    "DVSD": "dvvideo",
    "I420": "rawvideo",
    "IYUV": "rawvideo",
    "YV12": "rawvideo",
    "YUY2": "rawvideo",
    "UYVY": "rawvideo",
}
"""Video FOURCCs (upper-cased) -> FFmpeg's codec names, so a row reads the same as one FFmpeg probed."""


class NotAviError(ValueError):
    """The bytes are not an AVI file: they do not start with ``RIFF <size> "AVI "``."""


class AviHeaderError(ValueError):
    """An AVI whose ``hdrl`` is missing, cut off or gives no video frame count (FFmpeg may still read it)."""


@dataclass(frozen=True)
class AviVideoTrack(ContainerTrack):
    """The first video stream of an AVI: ``frames`` is its ``strh.dwLength``, ``hdrl_bytes`` what was parsed."""

    hdrl_bytes: int


def read_avi_header(f: BinaryIO, file_size: int) -> AviVideoTrack:
    """Parse the ``hdrl`` list at the start of the seekable AVI file ``f`` (``file_size`` bytes).

    Raises :class:`NotAviError` for any other file and :class:`AviHeaderError` when the header is cut off,
    malformed or holds no video stream with a frame count.
    """
    f.seek(0)
    head = f.read(24)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"AVI ":
        raise NotAviError("not an AVI file: no RIFF AVI signature")
    if len(head) < 24 or head[12:16] != b"LIST" or head[20:24] != b"hdrl":
        raise AviHeaderError("the AVI does not start with its hdrl list")
    (size,) = struct.unpack_from("<I", head, 16)
    if size < 4 or size > MAX_HDRL_BYTES or 20 + size > file_size:
        raise AviHeaderError(f"the AVI's hdrl list has an impossible size {size}")
    body = f.read(size - 4)
    if len(body) < size - 4:
        raise AviHeaderError("the AVI's hdrl list is cut off")
    return _parse_hdrl(body, size + 8)


def _chunks(body: bytes) -> list[tuple[bytes, bytes]]:
    """The (id, body) chunks of a list body; a ``LIST`` chunk's id is its list type (``strl``, ``odml``)."""
    out = []
    pos = 0
    while pos + 8 <= len(body):
        kind, size = struct.unpack_from("<4sI", body, pos)
        start = pos + 8
        if start + size > len(body):
            raise AviHeaderError(f"chunk {kind!r} inside hdrl has a bad size {size}")
        chunk = body[start : start + size]
        if kind == b"LIST":
            if size < 4:
                raise AviHeaderError(f"LIST inside hdrl has a bad size {size}")
            kind, chunk = chunk[:4], chunk[4:]
        out.append((kind, chunk))
        pos = start + size + (size & 1)
    return out


def _parse_hdrl(body: bytes, hdrl_bytes: int) -> AviVideoTrack:
    chunks = _chunks(body)
    main = dict(chunks).get(b"avih", b"")
    for kind, strl in chunks:
        if kind != b"strl":
            continue
        stream = dict(_chunks(strl))
        strh = stream.get(b"strh", b"")
        if len(strh) < 48 or strh[:4] != b"vids":
            continue
        return _video_stream(strh, stream.get(b"strf", b""), main, hdrl_bytes)
    raise AviHeaderError("the AVI header lists no video stream")


def _video_stream(strh: bytes, strf: bytes, main: bytes, hdrl_bytes: int) -> AviVideoTrack:
    handler = strh[4:8]
    scale, rate, _start, length, _buffer, _quality, sample_size = struct.unpack_from("<7I", strh, 20)
    if sample_size or not length:
        raise AviHeaderError("the AVI's video stream header gives no frame count")
    fps = rate / scale if rate and scale else None
    width = height = 0
    compression = handler
    if len(strf) >= 20:
        width, height = struct.unpack_from("<ii", strf, 4)
        compression = strf[16:20]
    elif len(main) >= 40:
        width, height = struct.unpack_from("<II", main, 32)
    return AviVideoTrack(
        frames=int(length),
        fps=round(fps, 6) if fps else None,
        duration=round(length / fps, 6) if fps else None,
        codec=_codec_name(compression, handler),
        width=abs(int(width)),
        height=abs(int(height)),
        hdrl_bytes=int(hdrl_bytes),
    )


def _codec_name(compression: bytes, handler: bytes) -> str:
    """FFmpeg's name for the stream's FOURCC (``strf`` compression first, ``strh`` handler second)."""
    if compression == b"\0\0\0\0":
        return "rawvideo"
    for fourcc in (compression, handler):
        name = fourcc.decode("latin-1").strip("\0 ").upper()
        if name in CODEC_NAMES:
            return CODEC_NAMES[name]
    return compression.decode("latin-1").strip("\0 ").lower() or "unknown"
