"""Run windows: restrict a run's listing to its data interval, or to a date-templated prefix.

Scheduled and backfill runs of ``lightly_curation`` each cover a data interval ``[start, end)``. Two ways map
it onto a bucket, and they combine:

* ``datasource.window: data_interval`` keeps only the objects whose last-modified time is inside the interval.
* A Jinja template in the datasource URI, e.g. ``s3://bucket/raw/{{ ds_nodash }}/``, names the folder of the
  interval: the URI up to the last ``/`` before the first ``{{`` is the datasource *root*; the rest is rendered
  from the interval and only that folder below the root is listed.

Keys stay relative to the root, so every window's objects land in one datapool (dataset, root): overlapping
windows, re-run windows and later whole-datasource runs see what earlier windows processed, and nothing is
processed twice. Airflow does not render Jinja in Params; the list stage renders the template here, in a
sandbox, with only the variables of :data:`TEMPLATE_VARIABLES`, all taken from the interval's start (the
logical date of scheduled and backfill runs) and end.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

import jinja2
import jinja2.sandbox
import pandas as pd

from lightly_tasks.config import WINDOW_MODES
from lightly_tasks.storage import OBJECT_COLUMNS, DatasourceNotFoundError, Location, list_objects, safe_key

TEMPLATE_VARIABLES = ("ds", "ds_nodash", "ts", "ts_nodash", "data_interval_start", "data_interval_end")
_ENV = jinja2.sandbox.ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False)


class WindowError(ValueError):
    """The run's window cannot be applied: no data interval, or a template that does not render to a folder."""


@dataclass(frozen=True)
class RunWindow:
    """The data interval ``[start, end)`` of a run; both None for runs without one (manual, asset-triggered)."""

    start: datetime | None = None
    end: datetime | None = None

    def describe(self) -> str | None:
        """``[start, end)`` in ISO form for logs and manifests, None without an interval."""
        if self.start is None or self.end is None:
            return None
        return f"[{_utc(self.start).isoformat()}, {_utc(self.end).isoformat()})"


def _utc(value: datetime) -> pd.Timestamp:
    stamp = pd.Timestamp(value)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def split_template(uri: str) -> tuple[str, str]:
    """``(root_uri, template)``: the URI before the path segment holding the first ``{{``, and the rest.

    ``template`` is '' for a URI without a template. ``s3://b/raw/{{ ds_nodash }}/`` gives
    ``('s3://b/raw', '{{ ds_nodash }}/')``.
    """
    at = uri.find("{{")
    if at < 0:
        return uri, ""
    cut = uri.rfind("/", 0, at)
    return uri[:cut], uri[cut + 1 :]


def template_problem(uri: str) -> str | None:
    """Why the prefix template of ``uri`` is unusable (placement, Jinja syntax), or None when it is fine."""
    root, template = split_template(uri)
    if not template:
        return None
    parts = urlsplit(root)
    if not (parts.path.strip("/") if parts.scheme == "file" else parts.netloc):
        return "a prefix template must come after the bucket or folder, e.g. s3://bucket/raw/{{ ds_nodash }}/"
    try:
        parsed = _ENV.parse(template)
    except jinja2.TemplateSyntaxError as exc:
        return f"prefix template {template!r} is not valid Jinja: {exc.message}"
    unsafe = next((node for node in parsed.find_all(jinja2.nodes.Node) if not _allowed(node)), None)
    if unsafe is not None:
        return (
            f"prefix template {template!r}: {type(unsafe).__name__} is not allowed; use the variables "
            f"({', '.join(TEMPLATE_VARIABLES)}), their .strftime('...'), slices and the filters "
            f"{', '.join(sorted(SAFE_FILTERS))}"
        )
    return None


SAFE_FILTERS = frozenset({"lower", "upper", "trim", "string"})
"""Filters a prefix template may use (no longer output than input; ``replace`` could multiply it)."""
_SAFE_NODES = (
    jinja2.nodes.Template,
    jinja2.nodes.Output,
    jinja2.nodes.TemplateData,
    jinja2.nodes.Name,
    jinja2.nodes.Const,
    jinja2.nodes.Getattr,
    jinja2.nodes.Getitem,
    jinja2.nodes.Slice,
    jinja2.nodes.Concat,
)


def _allowed(node: jinja2.nodes.Node) -> bool:
    """Whether a template node is one whose output stays small: no arithmetic, loops or arbitrary calls.

    The sandbox stops unsafe attribute access, not ``{{ 'a' * 10**11 }}``, which would exhaust the worker.
    """
    if isinstance(node, jinja2.nodes.Filter):
        return node.name in SAFE_FILTERS
    if isinstance(node, jinja2.nodes.Call):
        return (
            isinstance(node.node, jinja2.nodes.Getattr)
            and node.node.attr in ("strftime", "isoformat")
            and not node.kwargs
            and node.dyn_args is None
            and node.dyn_kwargs is None
        )
    if isinstance(node, jinja2.nodes.Getattr):
        return not node.attr.startswith("_")
    return isinstance(node, _SAFE_NODES)


def render_prefix(template: str, window: RunWindow) -> str:
    """Render a prefix template from the run's interval into a relative folder path (no leading/trailing '/').

    Raises :class:`WindowError` without an interval, for an unknown variable, or when the result would be empty
    or leave the datasource root.
    """
    if window.start is None or window.end is None:
        raise WindowError(
            "datasource.uri: the prefix template needs a run with a data interval (a scheduled or backfill run, "
            "or a manual run given a logical date); this run has none"
        )
    start, end = _utc(window.start), _utc(window.end)
    variables = {
        "ds": start.strftime("%Y-%m-%d"),
        "ds_nodash": start.strftime("%Y%m%d"),
        "ts": start.isoformat(),
        "ts_nodash": start.strftime("%Y%m%dT%H%M%S"),
        "data_interval_start": start.to_pydatetime(),
        "data_interval_end": end.to_pydatetime(),
    }
    try:
        rendered = _ENV.from_string(template).render(variables)
    except jinja2.UndefinedError as exc:
        raise WindowError(
            f"datasource.uri: {exc.message} in prefix template {template!r}; available: "
            f"{', '.join(TEMPLATE_VARIABLES)}"
        ) from exc
    except jinja2.TemplateError as exc:
        raise WindowError(f"datasource.uri: prefix template {template!r} failed: {exc}") from exc
    folder = rendered.strip().strip("/")
    try:
        folder = safe_key(folder) if folder else ""
    except ValueError as exc:
        raise WindowError(f"datasource.uri: prefix template rendered to {rendered!r}: {exc}") from exc
    if not folder:
        raise WindowError(f"datasource.uri: prefix template {template!r} rendered to an empty folder")
    return folder


def in_interval(objects: pd.DataFrame, window: RunWindow) -> pd.Series:
    """Mask of the objects whose ``last_modified`` is in ``[start, end)``; objects without one are outside."""
    if window.start is None or window.end is None:
        raise WindowError(
            "datasource.window: 'data_interval' needs a run with a data interval (a scheduled or backfill run, "
            "or a manual run given a logical date); this run has none"
        )
    modified = pd.to_datetime(objects["last_modified"], utc=True)
    return (modified >= _utc(window.start)) & (modified < _utc(window.end))


@dataclass(frozen=True)
class WindowListing:
    """A window's objects (keys relative to the datasource root) and what restricted them."""

    objects: pd.DataFrame
    folder: str | None
    interval: str | None
    n_outside: int


def list_window(
    root: Location,
    uri: str,
    *,
    mode: str,
    window: RunWindow,
    extensions: Iterable[str],
) -> WindowListing:
    """List the objects of one run: below the rendered template folder of ``uri`` if it has one, and inside
    the data interval if ``mode`` is ``data_interval``.

    ``root`` is the datasource root (``uri`` before its template). A templated folder that does not exist is an
    empty window (a day without uploads), but a missing root still raises ``DatasourceNotFoundError``.
    """
    if mode not in WINDOW_MODES:
        raise WindowError(f"datasource.window: must be one of {', '.join(WINDOW_MODES)}; got {mode!r}")
    _, template = split_template(uri)
    folder = render_prefix(template, window) if template else None
    if folder is None:
        objects = list_objects(root, extensions=extensions)
    else:
        try:
            objects = list_objects(root.child(folder), extensions=extensions)
        except DatasourceNotFoundError:
            if not root.fs.exists(root.root):
                raise
            objects = _empty_listing()
        objects = objects.assign(key=[posixpath.join(folder, k) for k in objects["key"]])
    n_outside = 0
    interval = None
    if mode == "data_interval":
        inside = in_interval(objects, window)
        n_outside = int((~inside).sum())
        objects = objects.loc[inside].reset_index(drop=True)
        interval = window.describe()
    return WindowListing(objects=objects, folder=folder, interval=interval, n_outside=n_outside)


def _empty_listing() -> pd.DataFrame:
    frame = pd.DataFrame({c: [] for c in OBJECT_COLUMNS})
    frame["size"] = frame["size"].astype("int64")
    frame["last_modified"] = pd.to_datetime(frame["last_modified"], utc=True)
    return frame
