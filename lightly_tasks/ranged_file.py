"""A seekable, byte-counting, deadline-checked file object over one datasource object (fsspec ranged reads).

Decoders (PyAV, decord) and the MP4 box walker read through :func:`open_counted`: ``Location.fs.open`` with a
block size and cache type, so on an object store every fetch is a ranged GET of about ``block_size`` bytes and
only the parts a reader touches cross the network. The counter sees the bytes the filesystem fetched (for a
buffered remote file: what its cache asked the store for, read-ahead included), or the bytes read where the
filesystem has no cache (a local file). Every read and seek first checks a :class:`Deadline`, so a reader
stuck on a slow or endless object fails with :class:`DeadlineExceeded` instead of hanging the task.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from lightly_tasks.storage import TRANSPORT_ERRORS, ByteCounter, Location, ObjectReadError


class DeadlineExceeded(TimeoutError):
    """The time limit for one object ran out, or its work was cancelled, while reading or decoding it."""


class Deadline:
    """A time limit (``seconds``; None = none) started at construction, which another thread may cancel."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self.started = time.monotonic()
        self._cancelled = threading.Event()

    def remaining(self) -> float | None:
        """Seconds left (>= 0), or None without a limit."""
        if self.seconds is None:
            return None
        return max(0.0, self.seconds - (time.monotonic() - self.started))

    def cancel(self) -> None:
        self._cancelled.set()

    def check(self) -> None:
        """Raise :class:`DeadlineExceeded` when the time is up or the work was cancelled."""
        if self._cancelled.is_set():
            raise DeadlineExceeded("cancelled")
        if self.seconds is not None and time.monotonic() - self.started > self.seconds:
            raise DeadlineExceeded(f"time limit of {self.seconds:g}s exceeded")


class CountedFile(io.RawIOBase):
    """Wrap an fsspec file: count fetched bytes into ``counter`` and check ``deadline`` on every call."""

    def __init__(self, raw: io.IOBase, counter: ByteCounter | None = None, deadline: Deadline | None = None):
        super().__init__()
        self._raw = raw
        self._counter = counter
        self._deadline = deadline
        self.bytes_read = 0
        cache = getattr(raw, "cache", None)
        fetcher: Callable[[int, int], bytes] | None = getattr(cache, "fetcher", None)
        self._count_reads = fetcher is None
        if fetcher is not None:

            def counted_fetch(start: int, end: int) -> bytes:
                data = fetcher(start, end)
                self._add(len(data))
                return data

            cache.fetcher = counted_fetch  # type: ignore[union-attr]

    def _add(self, n: int) -> None:
        self.bytes_read += n
        if self._counter is not None:
            self._counter.add(n)

    def _check(self) -> None:
        if self._deadline is not None:
            self._deadline.check()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        self._check()
        data = self._raw.read(len(buffer))
        if self._count_reads:
            self._add(len(data))
        buffer[: len(data)] = data
        return len(data)

    def read(self, size: int = -1) -> bytes:
        self._check()
        data = self._raw.read(size)
        if self._count_reads:
            self._add(len(data))
        return data

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._check()
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


@contextmanager
def open_counted(
    location: Location,
    key: str,
    *,
    size: int | None,
    counter: ByteCounter | None,
    block_size: int,
    cache_type: str = "blockcache",
    max_blocks: int = 2,
    deadline: Deadline | None = None,
) -> Iterator[CountedFile]:
    """Open object ``key`` for ranged reads of ``block_size`` bytes (``size``: the listed size, saves a HEAD).

    The default cache keeps the ``max_blocks`` most recently used blocks, so a demuxer that reads the start,
    jumps to an index at the end (an MP4's ``moov``) and comes back fetches no block twice.

    Raises FileNotFoundError when the object is gone and :class:`ObjectReadError` for another transport
    failure on open; later read failures surface from the reader's calls.
    """
    try:
        options = {"maxblocks": max_blocks} if cache_type == "blockcache" else {}
        raw = location.fs.open(
            location.path(key),
            "rb",
            block_size=block_size,
            cache_type=cache_type,
            cache_options=options,
            size=size,
        )
    except FileNotFoundError:
        raise
    except TRANSPORT_ERRORS as exc:
        raise ObjectReadError(f"{type(exc).__name__}: {exc}") from exc
    counted = CountedFile(raw, counter, deadline)
    try:
        yield counted
    finally:
        counted.close()
