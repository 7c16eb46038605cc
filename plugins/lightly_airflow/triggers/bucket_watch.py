"""``BucketWatchTrigger``: polls a datasource in the triggerer until new objects have settled.

The listing and the datapool read are blocking calls (fsspec, SQLAlchemy), so each poll runs in a worker
thread (:func:`asyncio.to_thread`) and the triggerer's event loop stays free for its other triggers. The
trigger's arguments are the watch's curation conf (no credentials: those come from the Airflow connection that
``datasource.conn_id`` names, looked up where the trigger runs) and its settle rule, all plain JSON.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from lightly_airflow.context import location_for
from lightly_tasks.bucket_watch import SettleRule, SettleState, datapool_id, manifest, observe
from lightly_tasks.config import RunConfig, parse_config
from lightly_tasks.pipeline import extensions_for
from lightly_tasks.storage import Location
from lightly_tasks.store import DatasetStore

EVENT_NEW_OBJECTS = "new_objects"
EVENT_IDLE = "idle"
EVENT_ERROR = "error"


class BucketWatchTrigger(BaseTrigger):
    """Fire once the datasource of ``conf`` holds new objects that settled (see :class:`SettleRule`).

    Yields exactly one event: ``new_objects`` with the manifest of :func:`lightly_tasks.bucket_watch.manifest`,
    ``idle`` when ``deadline`` (ISO timestamp) passes first, or ``error`` with a message when listing or the
    store fail.
    """

    def __init__(
        self,
        *,
        conf: dict[str, Any],
        deadline: str,
        quiet_seconds: float,
        min_objects: int = 1,
        max_wait_seconds: float | None = None,
        poll_seconds: float = 30.0,
    ) -> None:
        super().__init__()
        self.conf = conf
        self.deadline = deadline
        self.quiet_seconds = quiet_seconds
        self.min_objects = min_objects
        self.max_wait_seconds = max_wait_seconds
        self.poll_seconds = poll_seconds

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Class path and keyword arguments (JSON only) that re-create this trigger in the triggerer."""
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "conf": self.conf,
                "deadline": self.deadline,
                "quiet_seconds": self.quiet_seconds,
                "min_objects": self.min_objects,
                "max_wait_seconds": self.max_wait_seconds,
                "poll_seconds": self.poll_seconds,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Poll until the new objects settled, the deadline passed or an error occurred; yield one event."""
        dataset = str(self.conf.get("dataset", ""))
        store: DatasetStore | None = None
        try:
            config = parse_config(self.conf)
            dataset = config.dataset
            state = SettleState(
                SettleRule(
                    quiet_seconds=self.quiet_seconds,
                    min_objects=self.min_objects,
                    max_wait_seconds=self.max_wait_seconds,
                )
            )
            deadline = datetime.fromisoformat(self.deadline)
            location, store = await asyncio.to_thread(_open, config)
            extensions = extensions_for(config.input_type)
            while True:
                observation = await asyncio.to_thread(
                    observe, location, store, dataset=dataset, extensions=extensions
                )
                # fingerprinting a large listing takes seconds: off the triggerer's event loop, like the listing
                decision = await asyncio.to_thread(state.update, observation, time.monotonic())
                self.log.info("watching %s for dataset %s: %s", location.uri, dataset, decision.reason)
                if decision.ready:
                    event = await asyncio.to_thread(
                        manifest, observation, dataset=dataset, datasource=datapool_id(location)
                    )
                    yield TriggerEvent({"status": EVENT_NEW_OBJECTS, **event})
                    return
                remaining = (deadline - datetime.now(UTC)).total_seconds()
                if remaining <= 0:
                    yield TriggerEvent(
                        {
                            "status": EVENT_IDLE,
                            "dataset": dataset,
                            "datasource": datapool_id(location),
                            "reason": decision.reason,
                        }
                    )
                    return
                await asyncio.sleep(min(self.poll_seconds, remaining))
        except Exception as exc:  # reported to the sensor, which fails the task with this message
            yield TriggerEvent({"status": EVENT_ERROR, "dataset": dataset, "message": f"{type(exc).__name__}: {exc}"})
        finally:
            if store is not None:
                store.close()


def _open(config: RunConfig) -> tuple[Location, DatasetStore]:
    """The datasource's location (credentials from its Airflow connection) and the dataset store."""
    return location_for(config.datasource.uri, config.datasource.conn_id), DatasetStore(config.store_url)
