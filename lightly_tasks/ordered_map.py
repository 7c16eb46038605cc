"""``map`` on a thread pool, in input order, with bounded look-ahead (the decoding passes' worker pattern).

A module of its own (no pandas, no fsspec) so that the decoder child process can use it and start fast.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def ordered_map(fn: Callable[[T], R], items: Iterable[T], *, workers: int, window: int) -> Iterator[R]:
    """``map(fn, items)`` on a thread pool, in input order, with at most ``window`` results in flight.

    Bounded look-ahead keeps memory flat on shards of any size, while I/O and decoding (both release the GIL)
    overlap across threads. ``items`` is consumed in the calling thread.
    """
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
        pending: deque[Future[R]] = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
