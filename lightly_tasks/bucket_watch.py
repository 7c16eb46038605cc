"""Find the objects of a datasource that a dataset's datapool has not seen, and decide when to curate them.

The bucket-watch trigger calls :func:`observe` every few seconds and feeds each :class:`Observation` to a
:class:`SettleState`. That state fires only when the set of new objects has not changed for the quiet period
(so an upload in progress is not split into many runs), holds at least ``min_objects`` objects (or has waited
``max_wait_seconds``), and no run holds the dataset's lease (a curation in progress will put these objects
into the datapool itself). Plain Python: no Airflow here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from lightly_tasks.storage import IMAGE_EXTENSIONS, OBJECT_COLUMNS, Location, list_objects
from lightly_tasks.store import DatasetStore, Lease

MAX_MANIFEST_KEYS = 1000
"""At most this many keys travel in a manifest (trigger event, XCom); the counts always cover all objects."""


@dataclass(frozen=True)
class Observation:
    """One look at a datasource: the objects its dataset's datapool has not seen, and the dataset's lease."""

    new: pd.DataFrame
    n_listed: int
    lease: Lease | None = None


@dataclass(frozen=True)
class SettleRule:
    """When a batch of new objects is ready: quiet for ``quiet_seconds`` and ``min_objects`` of them.

    ``max_wait_seconds`` (optional) fires with fewer than ``min_objects`` once the first of them has waited
    that long, so a trickle of uploads is curated eventually.
    """

    quiet_seconds: float
    min_objects: int = 1
    max_wait_seconds: float | None = None

    def __post_init__(self) -> None:
        if self.quiet_seconds < 0:
            raise ValueError(f"quiet_seconds must be >= 0; got {self.quiet_seconds}")
        if self.min_objects < 1:
            raise ValueError(f"min_objects must be >= 1; got {self.min_objects}")
        if self.max_wait_seconds is not None and self.max_wait_seconds <= 0:
            raise ValueError(f"max_wait_seconds must be > 0; got {self.max_wait_seconds}")


@dataclass(frozen=True)
class Decision:
    """What one observation means: ``ready`` to curate or not, and why (for the log)."""

    ready: bool
    reason: str


@dataclass
class SettleState:
    """The quiet-period state machine over successive observations (times in seconds, any monotonic clock)."""

    rule: SettleRule
    _fingerprint: str | None = field(default=None, init=False)
    _changed_at: float | None = field(default=None, init=False)
    _waiting_since: float | None = field(default=None, init=False)

    def update(self, observation: Observation, now: float) -> Decision:
        """Record an observation made at ``now`` and say whether its new objects are ready to curate."""
        new = observation.new
        if new.empty:
            self._fingerprint = self._changed_at = self._waiting_since = None
            return Decision(False, "no new objects")
        current = fingerprint(new)
        if current != self._fingerprint:
            self._fingerprint, self._changed_at = current, now
        if self._waiting_since is None:
            self._waiting_since = now
        if observation.lease is not None:
            return Decision(
                False, f"{len(new)} new objects, but run {observation.lease.holder!r} curates the dataset"
            )
        quiet_for = now - self._changed_at
        if quiet_for < self.rule.quiet_seconds:
            return Decision(
                False,
                f"{len(new)} new objects, last change {quiet_for:.0f} s ago (quiet period "
                f"{self.rule.quiet_seconds:g} s)",
            )
        waited = now - self._waiting_since
        if len(new) < self.rule.min_objects and (
            self.rule.max_wait_seconds is None or waited < self.rule.max_wait_seconds
        ):
            return Decision(
                False, f"{len(new)} new objects, fewer than min_objects={self.rule.min_objects}"
            )
        return Decision(True, f"{len(new)} new objects, unchanged for {quiet_for:.0f} s")


def unseen_objects(listed: pd.DataFrame, seen: Mapping[str, str]) -> pd.DataFrame:
    """The listed objects whose key the datapool lacks or records with another etag (a changed object)."""
    is_new = [seen.get(key) != etag for key, etag in zip(listed["key"], listed["etag"], strict=True)]
    return listed.loc[is_new, OBJECT_COLUMNS].reset_index(drop=True)


def datapool_id(location: Location) -> str:
    """The datasource as the datapool records it (as ``RunContext.datasource_id``): redacted URI, no '/' tail."""
    return location.uri.rstrip("/")


def observe(
    location: Location,
    store: DatasetStore,
    *,
    dataset: str,
    extensions: Iterable[str] = IMAGE_EXTENSIONS,
) -> Observation:
    """List ``location``, read the dataset's lease, and drop what the dataset's datapool has seen.

    The datapool is read last: a run that commits (and so releases the lease) between these reads shows its
    objects as seen, so a free lease is never paired with objects that a run has just processed.
    """
    listed = list_objects(location, extensions=extensions)
    lease = store.lease(dataset)
    seen = store.seen_objects(dataset, datapool_id(location))
    return Observation(new=unseen_objects(listed, seen), n_listed=len(listed), lease=lease)


def fingerprint(objects: pd.DataFrame) -> str:
    """SHA-256 over the sorted (key, etag, size) of ``objects``: changes when any object is added or rewritten."""
    digest = hashlib.sha256()
    for key, etag, size in sorted(zip(objects["key"], objects["etag"], objects["size"], strict=True)):
        digest.update(f"{key}\0{etag}\0{int(size)}\n".encode())
    return digest.hexdigest()


def manifest(observation: Observation, *, dataset: str, datasource: str) -> dict[str, Any]:
    """A small JSON-able summary of the new objects: counts, bytes, fingerprint and up to 1,000 keys."""
    new = observation.new.sort_values("key", kind="stable")
    keys = new["key"].tolist()
    newest = new["last_modified"].max() if len(new) else pd.NaT
    return {
        "dataset": dataset,
        "datasource": datasource,
        "n_objects": len(keys),
        "n_listed": observation.n_listed,
        "bytes": int(new["size"].sum()),
        "fingerprint": fingerprint(new),
        "newest_last_modified": None if pd.isna(newest) else pd.Timestamp(newest).isoformat(),
        "keys": keys[:MAX_MANIFEST_KEYS],
        "keys_truncated": len(keys) > MAX_MANIFEST_KEYS,
    }
