"""Progress lines for long loops in task logs: done/total, rate and ETA, at most every few seconds."""

from __future__ import annotations

import logging
import time


class Progress:
    """Log ``<what>: done/total (pct), rate/s, ETA`` every ``interval`` seconds and once at the end."""

    def __init__(
        self,
        what: str,
        total: int,
        *,
        unit: str = "objects",
        interval: float = 5.0,
        logger: logging.Logger | None = None,
    ) -> None:
        self.what, self.total, self.unit, self.interval = what, total, unit, interval
        self.log = logger or logging.getLogger("lightly_tasks")
        self.done = 0
        self.started = time.monotonic()
        self._last = self.started

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self.log.info(self.line())

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = self.done / elapsed
        pct = 100.0 * self.done / self.total if self.total else 100.0
        remaining = (self.total - self.done) / rate if rate > 0 else float("inf")
        eta = f"{remaining:.0f}s" if remaining != float("inf") else "?"
        return (
            f"{self.what}: {self.done}/{self.total} {self.unit} ({pct:.0f}%), "
            f"{rate:.1f} {self.unit}/s, ETA {eta}"
        )

    def finish(self) -> float:
        """Log the final line and return the seconds spent."""
        self.log.info(self.line() + f", done in {time.monotonic() - self.started:.1f}s")
        return time.monotonic() - self.started
