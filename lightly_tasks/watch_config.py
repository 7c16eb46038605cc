"""The bucket-watch configuration: which datasources the ``lightly_bucket_watch`` DAG watches, and how.

A JSON file (its path in ``$LIGHTLY_WATCH_CONFIG``, else ``<LIGHTLY_HOME>/bucket_watch.json``)::

    {"schedule": "*/5 * * * *",
     "watches": [{"name": "street", "quiet_seconds": 120, "min_objects": 20,
                  "conf": {"datasource": {"uri": "s3://bucket/raw/"}, "dataset": "street",
                           "stopping_condition": {"n_samples": 50}}}]}

Each watch's ``conf`` is exactly the ``lightly_curation`` conf that its runs get; it is validated here like a
trigger conf, so a bad watch file fails at DAG parse time with a message naming the key. The file is read
when the DAG file is parsed (it shapes the DAG: one sensor and one trigger task per watch), so it must be
readable by the dag-processor. Credentials never go in it: connections hold them (``datasource.conn_id``),
and a dataset store URL with a password belongs in ``$LIGHTLY_STORE_URL``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from lightly_tasks.config import (
    ConfigError,
    RunConfig,
    conf_strings,
    form_option,
    lightly_home,
    merge_conf,
    parse_config,
    parse_dataclass,
)

WATCH_CONFIG_ENV = "LIGHTLY_WATCH_CONFIG"
DEFAULT_SCHEDULE = "*/5 * * * *"


def _check_name(value: str) -> str | None:
    if value and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", value):
        return "must be 1-64 letters, digits, '_', '.', '-' starting with a letter or digit (it names tasks)"
    return None


@dataclass(frozen=True)
class WatchSettings:
    """How one datasource is watched: when a batch of new objects counts as settled, and how often to look."""

    name: str = field(
        default="",
        metadata=form_option(
            "Name", "Names the watch's tasks (watch_<name>, trigger_<name>). Empty: the dataset.", check=_check_name
        ),
    )
    quiet_seconds: float = field(
        default=60.0,
        metadata=form_option(
            "Quiet period",
            "Trigger only when no object was added or changed for this many seconds, so that an upload in "
            "progress is curated in one run rather than many.",
            minimum=0.0,
        ),
    )
    min_objects: int = field(
        default=1,
        metadata=form_option("Minimum objects", "Trigger only when at least this many new objects wait.", minimum=1),
    )
    max_wait_seconds: float | None = field(
        default=None,
        metadata=form_option(
            "Maximum wait",
            "Trigger with fewer than min_objects once the first new object has waited this long. Empty: wait "
            "for min_objects however long it takes.",
            exclusive_minimum=0.0,
        ),
    )
    poll_seconds: float = field(
        default=30.0,
        metadata=form_option(
            "Poll interval",
            "Seconds between two listings of the datasource (each is one paged LIST plus a datapool read).",
            exclusive_minimum=0.0,
        ),
    )
    window_seconds: float = field(
        default=900.0,
        metadata=form_option(
            "Watch window",
            "One watch task waits at most this long; with nothing to curate it is skipped and the next "
            "scheduled run of lightly_bucket_watch watches again.",
            exclusive_minimum=0.0,
        ),
    )
    claim_seconds: float = field(
        default=12 * 3600.0,
        metadata=form_option(
            "Claim time",
            "When the watch fires it leases the dataset for the curation run it triggers, for this long; the "
            "run renews the lease when it starts. Long enough for the run to wait its turn behind other "
            "curations; a run that never starts (e.g. lightly_curation paused) blocks the dataset's watch "
            "until then.",
            exclusive_minimum=0.0,
        ),
    )


@dataclass(frozen=True)
class Watch:
    """One watched datasource: its settings and the curation conf (raw, and as validated) of its runs."""

    settings: WatchSettings
    conf: dict[str, Any]
    config: RunConfig

    @property
    def name(self) -> str:
        return self.settings.name or self.config.dataset


@dataclass(frozen=True)
class WatchFile:
    """The whole watch file: the DAG's schedule and its watches."""

    schedule: str = DEFAULT_SCHEDULE
    watches: tuple[Watch, ...] = ()


def parse_watch(entry: Any, *, prefix: str = "", defaults: Mapping[str, Any] | None = None) -> Watch:
    """Validate one watch entry (settings plus ``conf``); raises :class:`ConfigError` naming the key.

    ``defaults`` is the conf that fills what the entry's conf leaves out (``LIGHTLY_CURATION_CONF``, which
    fills a triggered run's Params too): the watch's conf is the merged one, so the watch, its claim and the
    run it triggers read the same store and list the same objects.
    """
    where = prefix.rstrip(".") or "watch"
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{where}: expected an object, got {type(entry).__name__}")
    if "conf" not in entry:
        raise ConfigError(f"{prefix}conf: is required (the lightly_curation conf of this watch's runs)")
    conf = entry["conf"]
    if not isinstance(conf, Mapping):
        raise ConfigError(f"{prefix}conf: expected an object, got {type(conf).__name__}")
    settings = parse_dataclass(WatchSettings, {k: v for k, v in entry.items() if k != "conf"}, prefix=prefix)
    templated = next((key for key, value in conf_strings(conf) if "{{" in value), None)
    if templated:
        raise ConfigError(
            f"{prefix}conf.{templated}: a watch's conf cannot hold templates (the triggered run would render "
            "them with the whole Airflow context, and the watch would not)"
        )
    own_store_url = conf.get("store_url")
    conf = merge_conf(defaults or {}, conf)
    try:
        config = parse_config(conf)
    except ConfigError as exc:
        raise ConfigError(f"{prefix}conf.{exc}") from None
    if config.datasource.process_all:
        raise ConfigError(
            f"{prefix}conf.datasource.process_all: a watch curates new objects; process_all would reprocess "
            "the whole datasource on every trigger"
        )
    if config.datasource.window != "none":
        raise ConfigError(
            f"{prefix}conf.datasource.window: a watch curates what just landed, but a triggered run's data "
            "interval is the previous schedule interval; leave window at 'none'"
        )
    try:
        password = sa.make_url(config.store_url).password
    except sa.exc.ArgumentError:
        raise ConfigError(f"{prefix}conf.store_url: is not a valid SQLAlchemy URL") from None
    if password and own_store_url:
        raise ConfigError(
            f"{prefix}conf.store_url: holds a password, which would be stored in trigger arguments and run "
            "confs; leave it empty and set LIGHTLY_STORE_URL on the workers and the triggerer"
        )
    return Watch(settings=settings, conf=json.loads(json.dumps(dict(conf))), config=config)


def parse_watch_file(data: Any, *, defaults: Mapping[str, Any] | None = None) -> WatchFile:
    """Validate a whole watch file's JSON (``defaults``: see :func:`parse_watch`); raises :class:`ConfigError`."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"watch file: expected an object, got {type(data).__name__}")
    unknown = sorted(set(data) - {"schedule", "watches"})
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown key (known keys: schedule, watches)")
    schedule = data.get("schedule", DEFAULT_SCHEDULE)
    if not isinstance(schedule, str) or not schedule.strip():
        raise ConfigError(f"schedule: expected a cron expression or preset, got {schedule!r}")
    entries = data.get("watches", [])
    if not isinstance(entries, list):
        raise ConfigError(f"watches: expected a list, got {type(entries).__name__}")
    watches = tuple(
        parse_watch(entry, prefix=f"watches[{i}].", defaults=defaults) for i, entry in enumerate(entries)
    )
    names: dict[str, int] = {}
    sources: dict[tuple[str, str], int] = {}
    for i, watch in enumerate(watches):
        if watch.name in names:
            raise ConfigError(
                f"watches[{i}].name: {watch.name!r} is used by watches[{names[watch.name]}] too; give each "
                "watch of one dataset its own name"
            )
        names[watch.name] = i
        source = (watch.config.dataset, watch.config.datasource.uri.rstrip("/"))
        if source in sources:
            raise ConfigError(
                f"watches[{i}].conf: dataset {source[0]!r} already watches {source[1]} in watches[{sources[source]}]"
            )
        sources[source] = i
    return WatchFile(schedule=schedule.strip(), watches=watches)


def watch_file_path() -> Path | None:
    """``$LIGHTLY_WATCH_CONFIG``, else ``<LIGHTLY_HOME>/bucket_watch.json`` if it exists, else None."""
    if os.environ.get(WATCH_CONFIG_ENV):
        return Path(os.environ[WATCH_CONFIG_ENV]).expanduser()
    default = lightly_home() / "bucket_watch.json"
    return default if default.is_file() else None


def load_watch_file(path: Path | None = None, *, defaults: Mapping[str, Any] | None = None) -> WatchFile:
    """Read and validate the watch file (see :func:`watch_file_path`); no file configured: no watches.

    ``defaults``: the conf that fills what each watch's conf leaves out (see :func:`parse_watch`).

    Raises :class:`ConfigError` naming the file and the key for a missing file, bad JSON or a bad entry.
    """
    path = path or watch_file_path()
    if path is None:
        return WatchFile()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"watch file {path} (${WATCH_CONFIG_ENV}) does not exist") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"watch file {path}: not valid JSON: {exc}") from None
    try:
        return parse_watch_file(data, defaults=defaults)
    except ConfigError as exc:
        raise ConfigError(f"watch file {path}: {exc}") from None
