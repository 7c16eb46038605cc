"""A run whose dataset another run is curating waits for it, rescheduled, instead of failing.

Two curations of one dataset never run at once (the store's dataset lease, :meth:`DatasetStore.acquire_lease`).
``lightly_curation``'s own runs queue behind each other (``max_active_runs=1``), but a backfill has its own limit
(``airflow backfill create`` starts up to 10 runs at once unless told ``--max-active-runs``), and the bucket
watch claims the lease for the run it triggers. So when ``list`` finds the lease held, the task is rescheduled
(``up_for_reschedule``, freeing its worker slot, as a sensor in reschedule mode is) every
``LIGHTLY_LEASE_POLL_SECONDS`` (default 60) until the lease is free, and fails only after waiting
``LIGHTLY_LEASE_WAIT_SECONDS`` (default 12 h, the lease's own lifetime) in all.

Airflow 3's scheduler can mark a rescheduled task failed when the executor's "success" of its previous
attempt arrives after the task was queued again (apache/airflow#71172; seen here with a 5 s poll, one run in
three). ``list`` therefore has retries: a retry takes the waiting up again, its wait limit counted afresh.
Its own errors (a bad conf, a missing bucket, the wait limit) fail it at once, without those retries.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn, TypeVar

from airflow.sdk import get_current_context
from airflow.sdk.exceptions import AirflowFailException, AirflowRescheduleException

from lightly_tasks.pipeline import RUN_LEASE_SECONDS
from lightly_tasks.store import DatasetBusyError

log = logging.getLogger(__name__)

POLL_ENV = "LIGHTLY_LEASE_POLL_SECONDS"
WAIT_ENV = "LIGHTLY_LEASE_WAIT_SECONDS"
DEFAULT_POLL_SECONDS = 60.0

T = TypeVar("T")


def _seconds(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}: expected a number of seconds, got {raw!r}") from None
    if not value > 0:
        raise ValueError(f"{name}: must be > 0, got {raw!r}")
    return value


def wait_while_busy(take_lease_and_list: Callable[[], T]) -> T:
    """``take_lease_and_list()``, rescheduling the running task while another run holds the dataset's lease.

    Raises :class:`AirflowRescheduleException` (the task is tried again after the poll interval) or, once the
    task has waited the whole wait limit since its first try, :class:`AirflowFailException` with the
    :class:`DatasetBusyError` and how long it waited. Any other error also fails the task without retries
    (as :class:`AirflowFailException` naming it, the original chained): retries are for the scheduler race.
    """
    try:
        return take_lease_and_list()
    except DatasetBusyError as exc:
        return _reschedule(exc)
    except Exception as exc:
        raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc


def _reschedule(exc: DatasetBusyError) -> NoReturn:
    """Reschedule the running task for the next poll, or fail it once the wait limit is reached."""
    poll, limit = _seconds(POLL_ENV, DEFAULT_POLL_SECONDS), _seconds(WAIT_ENV, RUN_LEASE_SECONDS)
    now = datetime.now(UTC)
    context: Any = get_current_context()
    first_try = context["ti"].get_first_reschedule_date(context) or now
    waited = (now - first_try).total_seconds()
    if waited + poll > limit:
        raise AirflowFailException(
            f"DatasetBusyError: {exc}; gave up after waiting {waited:.0f} s ({WAIT_ENV}={limit:g})"
        ) from None
    log.info("%s; waiting for it: trying again in %g s (waited %.0f s so far)", exc, poll, waited)
    raise AirflowRescheduleException(reschedule_date=now + timedelta(seconds=poll)) from None
