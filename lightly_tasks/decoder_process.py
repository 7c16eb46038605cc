"""Decode videos in a child process, so that a decoder crash or hang costs one video, not the shard.

FFmpeg (under PyAV and decord) is C code fed with untrusted bytes: a malformed video can make it segfault,
abort or allocate until the kernel's OOM killer steps in, and a thread cannot be stopped while it is stuck in C.
:class:`DecoderProcess` runs the decoder in a child (``python -m lightly_tasks.decoder_process``, started once
per shard and again after each crash); the parent keeps everything else:

- **I/O and accounting**: the child has no datasource connection or credentials. It reads the video through
  :class:`PipeFile`, whose ``read``/``seek`` are requests the parent serves from its own byte-counted,
  deadline-checked :class:`~lightly_tasks.ranged_file.CountedFile`, so bytes are counted exactly as before.
- **Results**: the child decodes, computes each sampled frame's hash, metadata and thumbnail
  (:func:`~lightly_tasks.frame_samples.frame_result`) and sends back small :class:`FrameResult` records
  (thumbnails, never full-resolution frames).
- **Isolation**: the child inherits no credentials from the environment (:func:`child_environment`) and asks
  the kernel's OOM killer to pick it first, so a decoder that allocates without bound dies (a
  ``decoder crashed (signal 9, SIGKILL)`` verdict for its video) instead of the worker.
- **Verdicts**: when the child dies (end of file on its pipe), the video gets the reason
  ``decoder crashed (signal N, NAME)`` and the next video starts a fresh child; when the per-video time limit
  runs out, the parent kills the child (a hang in C code included) and records the timeout.

The child's side is :mod:`lightly_tasks.decoder_child` (lean imports: PyAV, numpy, PIL; it starts in well under
a second). A child announces ``ready`` after its imports; the per-video time limit starts after that.
"""

from __future__ import annotations

import fcntl
import io
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from lightly_tasks.decoder_child import CRASH_HOOK_ENV
from lightly_tasks.frame_samples import FrameResult
from lightly_tasks.ranged_file import CountedFile, Deadline, DeadlineExceeded, open_counted
from lightly_tasks.storage import ByteCounter, Location, read_failure_reason
from lightly_tasks.video import DecodeStats, StreamInfo, VideoOpenError

log = logging.getLogger(__name__)

STARTUP_SECONDS = 120.0
"""How long a fresh child may take to import its modules (a loaded worker is slow, not broken)."""
PIPE_BYTES = 2**20
"""Pipe buffer asked for (Linux's default limit for unprivileged processes) so results rarely block."""
STREAM_BLOCK_BYTES = 4 * 2**20
"""Ranged-read (read-ahead) size of the parent's file while a child streams a video."""
CHILD_ENV = frozenset(
    {
        "PATH",
        "HOME",
        "TMPDIR",
        "TZ",
        "LANG",
        "LD_LIBRARY_PATH",
        "PYTHONHOME",
        "PYTHONNOUSERSITE",
        "PYTHONHASHSEED",
        "PYTHONUTF8",
        CRASH_HOOK_ENV,
    }
)
"""Environment variables a decoder child inherits (besides ``LC_*``); ``PYTHONPATH`` is set from ``sys.path``."""
CHILD_THREAD_LIMITS = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
"""The child does no BLAS work: numpy's thread pools stay at one thread (many children on a big worker)."""


def child_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The child's environment: only what Python, FFmpeg and the locale need, never the parent's secrets.

    Workers often hold credentials in their environment (``AIRFLOW_CONN_*``, ``AWS_SECRET_ACCESS_KEY``, ...);
    the child reads nothing but the bytes its parent sends, so it gets none of them.
    """
    env = {name: value for name, value in environ.items() if name in CHILD_ENV or name.startswith("LC_")}
    env.update(CHILD_THREAD_LIMITS)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    return env


def describe_exit(returncode: int | None) -> str:
    """``signal 11, SIGSEGV`` for a child killed by a signal, ``exit status N`` otherwise."""
    if returncode is not None and returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "unknown signal"
        return f"signal {-returncode}, {name}"
    return f"exit status {returncode}"


class DecoderProcess:
    """One decoder child at a time: started on first use, replaced after it died or was killed."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        self._to_child: Connection | None = None
        self._from_child: Connection | None = None
        self.starts = 0

    @property
    def pid(self) -> int | None:
        """The running child's process id; None before the first start and after it ended."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def connections(self) -> tuple[Connection, Connection]:
        """(to child, from child) of a running child, starting one if none runs."""
        if self._proc is None or self._proc.poll() is not None:
            self._discard()
            self._start()
        assert self._to_child is not None and self._from_child is not None
        return self._to_child, self._from_child

    def _start(self) -> None:
        child_in, parent_out = os.pipe()
        parent_in, child_out = os.pipe()
        for fd in (parent_out, child_out):  # a thumbnail message in one write, not several 64 KiB ones
            try:
                fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
            except OSError:
                pass  # above the system's pipe-max-size: the default still works
        env = child_environment(os.environ)
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "lightly_tasks.decoder_child", str(child_in), str(child_out)],
                pass_fds=(child_in, child_out),
                stdin=subprocess.DEVNULL,
                env=env,
            )
        except BaseException:
            os.close(parent_in)
            os.close(parent_out)
            raise
        finally:
            os.close(child_in)
            os.close(child_out)
        self._to_child = Connection(parent_out, readable=False)
        self._from_child = Connection(parent_in, writable=False)
        self.starts += 1
        try:
            ready = self._from_child.poll(STARTUP_SECONDS) and self._from_child.recv() == ("ready",)
        except (EOFError, OSError):
            ready = False
        if not ready:
            proc = self._proc
            self.kill()
            if proc is not None and proc.returncode is not None and proc.returncode != -signal.SIGKILL:
                raise RuntimeError(f"the video decoder process died while starting ({describe_exit(proc.returncode)})")
            raise RuntimeError(f"the video decoder process did not start within {STARTUP_SECONDS:g}s")

    def exit_reason(self) -> str:
        """Why the child ended (waits for it): ``decoder crashed (signal 11, SIGSEGV)``."""
        assert self._proc is not None
        try:
            returncode = self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()
            returncode = self._proc.returncode
        self._discard()
        return f"decoder crashed ({describe_exit(returncode)})"

    def kill(self) -> None:
        """Stop the child now (a timeout); the next video starts a fresh one."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._discard()

    def _discard(self) -> None:
        for conn in (self._to_child, self._from_child):
            if conn is not None:
                conn.close()
        self._to_child = self._from_child = None
        if self._proc is not None and self._proc.poll() is not None:
            self._proc = None

    def close(self) -> None:
        """Ask the child to exit, and kill it if it does not."""
        if self._proc is not None and self._proc.poll() is None and self._to_child is not None:
            try:
                self._to_child.send(("exit",))
                self._proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.kill()
        self._proc = None

    def __enter__(self) -> DecoderProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class DecodeRequest:
    """One video to decode: where it is, how to sample and shrink its frames, its time limit, where to count bytes."""

    location: Location
    key: str
    size: int | None
    backend: str
    stride: int
    image_size: int
    timeout: float | None
    counter: ByteCounter

    def open(self, deadline: Deadline) -> AbstractContextManager[CountedFile]:
        """The video opened for streaming: ranged reads of :data:`STREAM_BLOCK_BYTES`, counted, checked
        against ``deadline``."""
        return open_counted(
            self.location,
            self.key,
            size=self.size,
            counter=self.counter,
            block_size=STREAM_BLOCK_BYTES,
            deadline=deadline,
        )


class IsolatedVideoJob:
    """Decode one video in ``process``'s child; the same interface as the in-process ``VideoJob``.

    Iterate for the sampled frames' results; afterwards ``info``, ``stats`` (None if the decode did not
    finish), ``error`` (why it stopped early) and ``crashed`` (the child died on this video).
    """

    def __init__(self, process: DecoderProcess, request: DecodeRequest) -> None:
        self.process, self.request = process, request
        self.info: StreamInfo | None = None
        self.stats: DecodeStats | None = None
        self.error: str | None = None
        self.crashed = False
        self._deadline = Deadline(request.timeout)
        self._read_error: str | None = None
        self._connections: tuple[Connection, Connection] | None = None

    def _timed_out(self) -> None:
        self.process.kill()
        self.error = f"timeout: not decoded within video.timeout_seconds={self.request.timeout:g}"

    def _serve(self, f: io.RawIOBase, request: tuple[Any, ...]) -> tuple[str, Any]:
        """The reply to the child's ``read``/``seek`` request (``ioerror`` with a reason on failure)."""
        try:
            return _serve_plain(f, request)
        except DeadlineExceeded:
            raise
        except OSError as exc:
            self._read_error = read_failure_reason(exc)
        return "ioerror", self._read_error

    def __iter__(self) -> Iterator[FrameResult]:
        self._connections = self.process.connections()  # a fresh child's start is not the video's time
        self._deadline = Deadline(self.request.timeout)
        try:
            with self.request.open(self._deadline) as f:
                yield from self._exchange(f)
        except DeadlineExceeded:
            self._timed_out()
        except OSError as exc:
            self.error = read_failure_reason(exc)

    def _exchange(self, f: io.RawIOBase) -> Iterator[FrameResult]:
        assert self._connections is not None
        spec = {
            "key": self.request.key,
            "backend": self.request.backend,
            "stride": self.request.stride,
            "image_size": self.request.image_size,
        }
        finished = False
        try:
            for kind, value in _conversation(self._connections, ("decode", spec), f, self._deadline, self._serve):
                if kind == "info":
                    self.info = value
                    continue
                if kind == "frame":
                    yield value
                    continue
                finished = True
                if kind == "end":  # a read failure may also end a stream early: the parent knows why
                    self.stats, self.error = value, self._read_error
                else:
                    self.error = self._read_error or value
                return
        except (EOFError, BrokenPipeError, ConnectionResetError):
            finished = True
            self.crashed = True
            self.error = self.process.exit_reason()
            log.error("decoding %s: %s", self.request.key, self.error)
        finally:
            if not finished:  # a timeout, or the caller stopped iterating: the child is mid-video
                self.process.kill()


def _serve_plain(f: io.RawIOBase, request: tuple[Any, ...]) -> tuple[str, Any]:
    """The reply to a child's ``read``/``seek`` request; a read failure is raised to the caller."""
    if request[0] == "read":
        return "data", f.read(request[1])
    return "pos", f.seek(request[1], request[2])


def _conversation(
    connections: tuple[Connection, Connection],
    request: tuple[Any, ...],
    f: io.RawIOBase,
    deadline: Deadline,
    serve: Callable[[io.RawIOBase, tuple[Any, ...]], tuple[str, Any]] = _serve_plain,
) -> Iterator[tuple[Any, ...]]:
    """Send ``request`` to the child and yield its messages, answering its reads and seeks of ``f`` meanwhile.

    Raises :class:`DeadlineExceeded` when the child says nothing before ``deadline``, and EOFError (or a
    broken pipe) when it died.
    """
    to_child, from_child = connections
    to_child.send(request)
    while True:
        if not from_child.poll(deadline.remaining()):
            raise DeadlineExceeded(f"time limit of {deadline.seconds:g}s exceeded")
        message = from_child.recv()
        if message[0] in ("read", "seek"):
            to_child.send(serve(f, message))
        else:
            yield message


def probe_isolated(
    process: DecoderProcess, f: io.RawIOBase, *, key: str, buffer_size: int, deadline: Deadline
) -> StreamInfo:
    """:func:`lightly_tasks.video.probe` of ``f`` in ``process``'s child (header probing runs FFmpeg too).

    Raises :class:`VideoOpenError` with the probe's reason, or ``decoder crashed (signal N, NAME)`` when the
    child died; a read failure or :class:`DeadlineExceeded` of ``f`` is raised as it is (the child is killed).
    """
    request = ("probe", {"key": key, "buffer_size": buffer_size})
    try:
        kind, value = next(_conversation(process.connections(), request, f, deadline))
    except (EOFError, BrokenPipeError, ConnectionResetError):
        raise VideoOpenError(process.exit_reason()) from None
    except (DeadlineExceeded, OSError):  # the child waits for a reply it will not get: replace it
        process.kill()
        raise
    if kind != "info":
        raise VideoOpenError(value)
    return value


def dump_isolated(
    process: DecoderProcess,
    f: io.RawIOBase,
    *,
    key: str,
    targets: list[int],
    keyframes: list[int],
    fmt: str,
    image_size: int | None,
    buffer_size: int,
    deadline: Deadline,
) -> Iterator[tuple[int, bytes | None]]:
    """(pts, encoded image or None) of the frames ``targets`` of ``f``, decoded and encoded in the child.

    The child seeks as :meth:`~lightly_tasks.video.PyAVReader.frames_at` does, so only the GOPs holding the
    targets are read. Raises :class:`VideoOpenError` with the reason when the video cannot be opened or the
    child died (``decoder crashed (...)``); a read failure or :class:`DeadlineExceeded` is raised as it is
    (the child is killed).
    """
    spec = {
        "key": key,
        "targets": targets,
        "keyframes": keyframes,
        "fmt": fmt,
        "image_size": image_size,
        "buffer_size": buffer_size,
    }
    finished = False
    try:
        for kind, value in _conversation(process.connections(), ("dump", spec), f, deadline):
            if kind == "dumped":
                yield value
                continue
            finished = True
            if kind == "end":
                return
            raise VideoOpenError(value)
    except (EOFError, BrokenPipeError, ConnectionResetError):
        finished = True
        raise VideoOpenError(process.exit_reason()) from None
    finally:
        if not finished:  # a timeout, a read failure, or the caller stopped listening: the child is mid-video
            process.kill()
