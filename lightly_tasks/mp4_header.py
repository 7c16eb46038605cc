"""Frame count, rate, duration, codec and size of an MP4/MOV video from its ``moov`` box alone.

ISO BMFF (MP4, MOV, M4V, 3GP) files are a sequence of boxes: ``[size:u32][type:4cc][body]`` (``size == 1``:
a u64 size follows; ``size == 0``: the box runs to the end of the file). The sample tables of every track sit
in ``moov``, which muxers put either before ``mdat`` ("faststart") or after it. :func:`read_mp4_header` reads
the 8-16 byte header of each top-level box, skips the others by seeking, and reads only the ``moov`` body, so
counting frames costs a few small ranged reads plus the size of ``moov`` (a few KB per minute of video).

Boxes used: ``moov/mvex`` (a fragmented file: samples live in ``moof`` boxes, not parsed here),
``trak/tkhd`` (display size), ``trak/mdia/mdhd`` (timescale, duration), ``trak/mdia/hdlr`` (``vide``),
``.../stbl/stsd`` (codec 4cc, coded size), ``.../stbl/stsz`` or ``stz2`` (sample count) and ``.../stbl/stts``
(sample durations).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO

from lightly_tasks.container_track import ContainerTrack

TOP_LEVEL_BOXES = frozenset(
    {
        b"ftyp",
        b"moov",
        b"mdat",
        b"free",
        b"skip",
        b"wide",
        b"pdin",
        b"uuid",
        b"meta",
        b"moof",
        b"mfra",
        b"styp",
        b"sidx",
        b"ssix",
        b"prft",
        b"emsg",
        b"pnot",
        b"PICT",
    }
)
"""Box types that may appear at the top level of an ISO BMFF / QuickTime file."""
MAX_MOOV_BYTES = 256 * 2**20
"""A ``moov`` larger than this is not read (no real video needs it; a corrupt size field might claim it)."""
CODEC_NAMES = {
    b"avc1": "h264",
    b"avc3": "h264",
    b"hvc1": "hevc",
    b"hev1": "hevc",
    b"mp4v": "mpeg4",
    b"av01": "av1",
    b"vp09": "vp9",
    b"vp08": "vp8",
    b"jpeg": "mjpeg",
    b"mjpa": "mjpeg",
    b"mjpb": "mjpeg",
    b"apcn": "prores",
    b"apch": "prores",
    b"apcs": "prores",
    b"apco": "prores",
    b"ap4h": "prores",
    b"s263": "h263",
}


class NotMp4Error(ValueError):
    """The bytes are not an ISO BMFF file: the first box header is not a known top-level box."""


class Mp4HeaderError(ValueError):
    """An MP4 whose ``moov`` is missing, cut off or holds no video; the message is a verdict reason."""


class FragmentedMp4Error(Mp4HeaderError):
    """A fragmented MP4: its samples are listed in ``moof`` boxes, which this module does not walk."""


@dataclass(frozen=True)
class Mp4VideoTrack(ContainerTrack):
    """The first video track of an MP4/MOV: ``frames`` is its sample count (one sample = one frame)."""

    timescale: int
    moov_bytes: int


def _box_header(f: BinaryIO, offset: int, file_size: int) -> tuple[bytes, int, int] | None:
    """(type, header length, box size) of the box at ``offset``; None at the end of the file."""
    if offset + 8 > file_size:
        return None
    f.seek(offset)
    head = f.read(8)
    if len(head) < 8:
        return None
    size, kind = struct.unpack(">I4s", head)
    header = 8
    if size == 1:
        large = f.read(8)
        if len(large) < 8:
            raise Mp4HeaderError(f"unreadable container: box {kind!r} at {offset} is cut off")
        size, header = struct.unpack(">Q", large)[0], 16
    elif size == 0:
        size = file_size - offset
    if size < header:
        raise Mp4HeaderError(f"unreadable container: box {kind!r} at {offset} has an impossible size {size}")
    return kind, header, size


def read_mp4_header(f: BinaryIO, file_size: int) -> Mp4VideoTrack:
    """Walk the top-level boxes of the seekable file ``f`` (``file_size`` bytes) and parse its ``moov``.

    Raises :class:`NotMp4Error` when the first box is not an ISO BMFF box and :class:`FragmentedMp4Error` for
    a fragmented file (the caller may try a demuxer for both), :class:`Mp4HeaderError` when ``moov`` is
    missing, cut off or holds no video track (its message starts "unreadable container" or "zero frames").
    """
    offset = 0
    first = True
    while True:
        found = _box_header(f, offset, file_size)
        if found is None:
            break
        kind, header, size = found
        if first and kind not in TOP_LEVEL_BOXES:
            raise NotMp4Error(f"not an MP4/MOV file: first box type {kind!r}")
        first = False
        if kind == b"moov":
            if size > MAX_MOOV_BYTES:
                raise Mp4HeaderError(
                    f"unreadable container: moov box of {size} bytes is over {MAX_MOOV_BYTES} bytes"
                )
            if offset + size > file_size:
                raise Mp4HeaderError(f"unreadable container: moov box ({size} bytes at {offset}) is cut off")
            body = f.read(size - header)
            if len(body) < size - header:
                raise Mp4HeaderError("unreadable container: moov box is cut off")
            return _parse_moov(body, size)
        offset += size
    if first:
        raise NotMp4Error("not an MP4/MOV file: too short for a box header")
    raise Mp4HeaderError("unreadable container: no moov box (the file is truncated or still being written)")


def _children(body: bytes) -> dict[bytes, list[bytes]]:
    """The child boxes of a container body, by type, in order."""
    out: dict[bytes, list[bytes]] = {}
    pos = 0
    while pos + 8 <= len(body):
        size, kind = struct.unpack_from(">I4s", body, pos)
        header = 8
        if size == 1:
            if pos + 16 > len(body):
                break
            size, header = struct.unpack_from(">Q", body, pos + 8)[0], 16
        elif size == 0:
            size = len(body) - pos
        if size < header or pos + size > len(body):
            raise Mp4HeaderError(f"unreadable container: box {kind!r} inside moov has a bad size {size}")
        out.setdefault(kind, []).append(body[pos + header : pos + size])
        pos += size
    return out


def _child(boxes: dict[bytes, list[bytes]], kind: bytes) -> bytes:
    if kind not in boxes:
        raise Mp4HeaderError(
            f"unreadable container: the video track lacks a {kind.decode(errors='replace')} box"
        )
    return boxes[kind][0]


def _timescale_duration(mdhd: bytes) -> tuple[int, int]:
    """(timescale, duration) of an ``mdhd``/``mvhd`` body (version 0 or 1)."""
    if mdhd[0] == 1:
        return struct.unpack_from(">IQ", mdhd, 20)
    return struct.unpack_from(">II", mdhd, 12)


def _parse_moov(body: bytes, moov_bytes: int) -> Mp4VideoTrack:
    moov = _children(body)
    if b"mvex" in moov:
        raise FragmentedMp4Error("fragmented MP4: frames are listed in moof boxes, not in moov")
    for trak in moov.get(b"trak", []):
        track = _children(trak)
        if b"mdia" not in track:
            continue
        mdia = _children(track[b"mdia"][0])
        hdlr = mdia.get(b"hdlr", [b""])[0]
        if len(hdlr) < 12 or hdlr[8:12] != b"vide":
            continue
        return _video_track(track, mdia, moov_bytes)
    raise Mp4HeaderError("zero frames: the file holds no video track")


def _video_track(
    track: dict[bytes, list[bytes]], mdia: dict[bytes, list[bytes]], moov_bytes: int
) -> Mp4VideoTrack:
    timescale, media_duration = _timescale_duration(_child(mdia, b"mdhd"))
    stbl = _children(_child(_children(_child(mdia, b"minf")), b"stbl"))
    stsd = _child(stbl, b"stsd")
    codec, coded_width, coded_height = "unknown", 0, 0
    if len(stsd) >= 16 + 28:
        fourcc = stsd[12:16]
        codec = CODEC_NAMES.get(fourcc, fourcc.decode("latin-1").strip())
        coded_width, coded_height = struct.unpack_from(">HH", stsd, 8 + 8 + 24)
    if b"stsz" in stbl:
        frames = struct.unpack_from(">I", stbl[b"stsz"][0], 8)[0]
    elif b"stz2" in stbl:
        frames = struct.unpack_from(">I", stbl[b"stz2"][0], 8)[0]
    else:
        raise Mp4HeaderError("unreadable container: the video track lacks a sample size table")
    ticks = 0
    if b"stts" in stbl:
        stts = stbl[b"stts"][0]
        (entries,) = struct.unpack_from(">I", stts, 4)
        if 8 + 8 * entries > len(stts):
            raise Mp4HeaderError("unreadable container: stts box is shorter than its entry count")
        pairs = struct.unpack_from(f">{2 * entries}I", stts, 8)
        ticks = sum(count * delta for count, delta in zip(pairs[::2], pairs[1::2], strict=True))
    ticks = ticks or media_duration
    duration = ticks / timescale if timescale and ticks else None
    fps = frames / duration if duration else None
    width, height = coded_width, coded_height
    tkhd = track.get(b"tkhd", [b""])[0]
    if len(tkhd) >= 84:
        # 16.16 fixed point display size at the end of tkhd (after the version-dependent times)
        display_w, display_h = struct.unpack_from(">II", tkhd, len(tkhd) - 8)
        if display_w >> 16 and display_h >> 16:
            width, height = display_w >> 16, display_h >> 16
    return Mp4VideoTrack(
        frames=int(frames),
        fps=round(fps, 6) if fps else None,
        duration=round(duration, 6) if duration else None,
        codec=codec,
        width=int(width),
        height=int(height),
        timescale=int(timescale),
        moov_bytes=int(moov_bytes),
    )
