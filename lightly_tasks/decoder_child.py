"""The decoder child process (``python -m lightly_tasks.decoder_child``): decodes the videos its parent names.

See :mod:`lightly_tasks.decoder_process` for the parent's side and the protocol. Imports stay lean (PyAV,
numpy, PIL; no pandas, fsspec or storage code) so that a child starts fast, also after a crash.

Test-only crash hook: with the environment variable ``LIGHTLY_TEST_DECODER_CRASH=1`` (set only by tests),
the child kills itself before probing the header of, after sending two frames of, or after dumping one frame
of a video whose key contains ``crash-sigsegv`` (SIGSEGV), ``crash-sigabrt`` (``os.abort()``) or
``crash-sigkill`` (SIGKILL, what the OOM killer sends), or hangs on ``crash-hang``. Without that variable,
keys have no effect.
"""

from __future__ import annotations

import io
import os
import signal
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from lightly_tasks.frame_encoding import encode_frame
from lightly_tasks.frame_samples import frame_result
from lightly_tasks.ordered_map import ordered_map
from lightly_tasks.video import PyAVReader, VideoOpenError, VideoReader, open_reader, probe

CRASH_HOOK_ENV = "LIGHTLY_TEST_DECODER_CRASH"
"""Test-only switch of the crash hook (see the module docstring)."""
OOM_SCORE_ADJ = 1000
"""The child's ``oom_score_adj``: the highest, so that under memory pressure the kernel kills it first."""
POST_WORKERS = 2
"""Threads computing frames' metadata, thumbnail and hash while the decoder goes on (they release the GIL)."""


class PipeFile(io.RawIOBase):
    """The child's view of the video: a seekable file whose reads and seeks the parent serves."""

    def __init__(self, to_parent: Connection, from_parent: Connection) -> None:
        super().__init__()
        self._to_parent, self._from_parent = to_parent, from_parent

    def _ask(self, *request: Any) -> Any:
        self._to_parent.send(request)
        kind, value = self._from_parent.recv()
        if kind == "ioerror":
            raise OSError(value)
        return value

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self._ask("read", len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def read(self, size: int = -1) -> bytes:
        return self._ask("read", -1 if size is None else size)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._ask("seek", offset, whence)

    def tell(self) -> int:
        return self._ask("seek", 0, io.SEEK_CUR)


def _test_crash_hook(key: str) -> None:
    """Test-only (see the module docstring): kill or hang this child for a marked key."""
    if os.environ.get(CRASH_HOOK_ENV) != "1":
        return
    if "crash-sigsegv" in key:
        os.kill(os.getpid(), signal.SIGSEGV)
    elif "crash-sigabrt" in key:
        os.abort()
    elif "crash-sigkill" in key:
        os.kill(os.getpid(), signal.SIGKILL)
    elif "crash-hang" in key:
        time.sleep(3600)


def _opened(to_parent: Connection, open_reader_: Callable[[], VideoReader]) -> VideoReader | None:
    """The reader ``open_reader_`` opens, or None after sending the parent the reason it could not."""
    try:
        return open_reader_()
    except VideoOpenError as exc:
        to_parent.send(("error", str(exc)))
    except Exception as exc:  # a read failure while opening; the parent knows its reason
        to_parent.send(("error", f"decode error: {type(exc).__name__}: {exc}"))
    return None


def _decode_one(to_parent: Connection, from_parent: Connection, spec: dict[str, Any]) -> None:
    """Decode one video for the parent: ``info``, ``frame``... and ``end``, or one ``error`` message."""
    file = PipeFile(to_parent, from_parent)
    reader = _opened(to_parent, lambda: open_reader(spec["backend"], file))
    if reader is None:
        return
    try:
        to_parent.send(("info", reader.info))
        image_size = spec["image_size"]
        results = ordered_map(
            lambda frame: frame_result(frame, image_size),
            reader.frames(spec["stride"]),
            workers=POST_WORKERS,
            window=2 * POST_WORKERS,
        )
        for sent, result in enumerate(results):
            if sent == 2:
                _test_crash_hook(spec["key"])
            to_parent.send(("frame", result.without_pixels()))
        to_parent.send(("end", reader.stats))
    except Exception as exc:  # any Python-level failure is this video's verdict, not the child's end
        to_parent.send(("error", f"decode error: {type(exc).__name__}: {exc}"))
    finally:
        reader.close()


def _probe_one(to_parent: Connection, from_parent: Connection, spec: dict[str, Any]) -> None:
    """Probe one video's header for the parent: one ``info`` or ``error`` message."""
    _test_crash_hook(spec.get("key", ""))
    try:
        info = probe(PipeFile(to_parent, from_parent), buffer_size=spec["buffer_size"])
    except VideoOpenError as exc:
        to_parent.send(("error", str(exc)))
    except Exception as exc:  # a Python-level failure of this header is its verdict
        to_parent.send(("error", f"unreadable container: {type(exc).__name__}: {exc}"))
    else:
        to_parent.send(("info", info))


def _dump_one(to_parent: Connection, from_parent: Connection, spec: dict[str, Any]) -> None:
    """Decode and encode the parent's selected frames of one video: ``dumped``... and ``end``, or ``error``."""
    file = PipeFile(to_parent, from_parent)
    reader = _opened(to_parent, lambda: PyAVReader(file, buffer_size=spec["buffer_size"], threads=False))
    if reader is None:
        return
    try:
        for sent, (pts, rgb) in enumerate(reader.frames_at(spec["targets"], spec["keyframes"])):
            if sent == 1:
                _test_crash_hook(spec["key"])
            data = None if rgb is None else encode_frame(rgb, fmt=spec["fmt"], image_size=spec["image_size"])
            to_parent.send(("dumped", (pts, data)))
        to_parent.send(("end", None))
    except Exception as exc:  # a Python-level failure ends this video's dump, not the child
        to_parent.send(("error", f"decode error: {type(exc).__name__}: {exc}"))
    finally:
        reader.close()


def _prefer_for_oom_kill() -> None:
    """Ask Linux's OOM killer to pick this child before its parent (raising one's own score needs no rights)."""
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write(str(OOM_SCORE_ADJ))
    except OSError:
        pass  # not Linux, or /proc read-only: the child still runs, only without the preference


def main(argv: list[str]) -> int:
    """The child's loop: decode the videos the parent names until it says ``exit`` or goes away."""
    from_parent = Connection(int(argv[0]), writable=False)
    to_parent = Connection(int(argv[1]), readable=False)
    _prefer_for_oom_kill()
    to_parent.send(("ready",))
    while True:
        try:
            message = from_parent.recv()
        except (EOFError, OSError):
            return 0
        if message[0] == "decode":
            _decode_one(to_parent, from_parent, message[1])
        elif message[0] == "probe":
            _probe_one(to_parent, from_parent, message[1])
        elif message[0] == "dump":
            _dump_one(to_parent, from_parent, message[1])
        else:
            return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
