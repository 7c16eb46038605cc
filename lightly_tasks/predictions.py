"""The Lightly predictions format: write it to any :class:`Location`, load it back with validation.

Layout (as the Lightly Worker reads predictions from a datasource, https://docs.lightly.ai/docs/prediction-format)::

    <location>/.lightly/predictions/
        tasks.json                      ["<task>", ...]
        <task>/schema.json              {"task_type": "object-detection" | "classification",
                                         "categories": [{"id": 0, "name": "person"}, ...]}
        <task>/<key without extension>.json
                                        {"file_name": "<key>", "predictions": [<singleton>, ...]}

Singletons: object detection ``{"category_id": int, "bbox": [x, y, w, h] (pixels of the original image, top-left
origin), "score": float, "probabilities": [...] (optional)}``; classification ``{"category_id": int,
"probabilities": [p per category, in category-id order] (optional)}``. ``file_name`` is the sample's key relative
to the datasource root; for video frames the key is the frame name (``video-000042-mp4.png``), so the file is
``video-000042-mp4.json`` as Lightly expects.

Readers (the selection strategies) call :func:`load_predictions`; it validates every file it reads and raises
:class:`PredictionFormatError` naming the file. Nothing here imports torch.
"""

from __future__ import annotations

import json
import math
import posixpath
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fsspec.implementations.local import LocalFileSystem

from lightly_tasks import artifacts
from lightly_tasks.storage import Location, safe_key

PREDICTIONS_DIR = ".lightly/predictions"
TASK_TYPES = ("object-detection", "classification")
TASK_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}"
PROBABILITY_SUM_TOLERANCE = 1e-2
READ_BATCH = 256
"""Prediction files fetched per concurrent ``cat`` call (s3fs runs each batch's GETs concurrently)."""

Prediction = dict[str, Any]


class PredictionFormatError(ValueError):
    """A predictions file is missing or does not follow the Lightly format; the message names the file."""


@dataclass(frozen=True)
class Category:
    id: int
    name: str


@dataclass(frozen=True)
class PredictionSchema:
    """A task's ``schema.json``: its type and categories (ids need not be contiguous)."""

    task_type: str
    categories: tuple[Category, ...]

    @property
    def ids(self) -> frozenset[int]:
        return frozenset(c.id for c in self.categories)

    @property
    def names(self) -> dict[int, str]:
        """Category id -> name."""
        return {c.id: c.name for c in self.categories}

    def to_json(self) -> dict[str, Any]:
        return {"task_type": self.task_type, "categories": [{"id": c.id, "name": c.name} for c in self.categories]}

    @classmethod
    def from_names(cls, task_type: str, names: Sequence[str]) -> PredictionSchema:
        """Schema whose category ids are the positions of ``names`` (0, 1, ...)."""
        return cls(task_type, tuple(Category(i, str(n)) for i, n in enumerate(names)))


def check_task_name(name: str) -> str | None:
    """None if ``name`` can be a task folder name, else what is wrong with it."""
    if not re.fullmatch(TASK_NAME_PATTERN, name or ""):
        return "must be 1-128 characters of letters, digits, '_', '.', '-' and start with a letter or digit"
    return None


def parse_schema(obj: Any, *, where: str) -> PredictionSchema:
    """Validate a ``schema.json`` document; ``where`` (a file URI) is named in the error."""
    if not isinstance(obj, Mapping):
        raise PredictionFormatError(f"{where}: expected a JSON object with task_type and categories")
    task_type = obj.get("task_type", obj.get("task_description"))  # task_description: older Lightly docs
    if task_type not in TASK_TYPES:
        raise PredictionFormatError(f"{where}: task_type must be one of {', '.join(TASK_TYPES)}; got {task_type!r}")
    categories = obj.get("categories")
    if not isinstance(categories, list) or not categories:
        raise PredictionFormatError(f"{where}: categories must be a non-empty list of {{id, name}}")
    parsed: list[Category] = []
    for i, c in enumerate(categories):
        if not isinstance(c, Mapping) or not _is_int(c.get("id")) or not isinstance(c.get("name"), str):
            raise PredictionFormatError(f"{where}: categories[{i}] must be {{\"id\": int, \"name\": str}}; got {c!r}")
        parsed.append(Category(int(c["id"]), c["name"]))
    ids = [c.id for c in parsed]
    if len(set(ids)) != len(ids):
        duplicated = sorted(k for k, n in Counter(ids).items() if n > 1)
        raise PredictionFormatError(f"{where}: category ids must be unique; repeated: {duplicated}")
    return PredictionSchema(task_type, tuple(parsed))


def sample_file(key: str) -> str:
    """A sample's prediction file below its task folder: its key without extension, plus ``.json``."""
    return posixpath.splitext(safe_key(key))[0] + ".json"


def _sample_file_or_none(file_name: str) -> str | None:
    """:func:`sample_file` of a file name, None for one no sample key could have (it leaves the root)."""
    try:
        return sample_file(file_name)
    except ValueError:
        return None


def prediction_relpath(task_name: str, key: str) -> str:
    """Path of a sample's prediction file below the location: ``.lightly/predictions/<task>/<stem>.json``."""
    return f"{PREDICTIONS_DIR}/{task_name}/{sample_file(key)}"


def validate_predictions(predictions: Any, schema: PredictionSchema, *, where: str) -> list[Prediction]:
    """Check a ``predictions`` list against ``schema``; returns it (as a list) or raises naming ``where``."""
    if not isinstance(predictions, list):
        raise PredictionFormatError(f"{where}: 'predictions' must be a list")
    ids = schema.ids
    n_categories = len(schema.categories)
    for i, p in enumerate(predictions):
        at = f"{where}: predictions[{i}]"
        if not isinstance(p, Mapping):
            raise PredictionFormatError(f"{at}: expected an object")
        if not _is_int(p.get("category_id")) or p["category_id"] not in ids:
            raise PredictionFormatError(
                f"{at}: category_id must be one of the schema's ids {sorted(ids)}; got {p.get('category_id')!r}"
            )
        probabilities = p.get("probabilities")
        if probabilities is not None:
            if (
                not isinstance(probabilities, list)
                or len(probabilities) != n_categories
                or not all(_is_number(v) and 0.0 <= v <= 1.0 for v in probabilities)
            ):
                raise PredictionFormatError(
                    f"{at}: probabilities must be {n_categories} numbers in [0, 1] (one per category)"
                )
            if abs(sum(probabilities) - 1.0) > PROBABILITY_SUM_TOLERANCE:
                raise PredictionFormatError(f"{at}: probabilities must sum to 1; sum is {sum(probabilities):.4f}")
        if schema.task_type == "object-detection":
            bbox = p.get("bbox")
            if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
                raise PredictionFormatError(f"{at}: bbox must be [x, y, width, height] in pixels; got {bbox!r}")
            if bbox[2] < 0 or bbox[3] < 0:
                raise PredictionFormatError(f"{at}: bbox width and height must be >= 0; got {bbox!r}")
            if not _is_number(p.get("score")) or not 0.0 <= p["score"] <= 1.0:
                raise PredictionFormatError(f"{at}: score must be a number in [0, 1]; got {p.get('score')!r}")
    return list(predictions)


def parse_prediction_file(obj: Any, schema: PredictionSchema, *, where: str, relpath: str | None = None) -> tuple[
    str, list[Prediction]
]:
    """Validate one sample's prediction document; returns (file_name, predictions).

    With ``relpath`` (the file's path below the predictions task folder) the file name must match it the way
    Lightly matches predictions to samples (``<stem of file_name>.json``).
    """
    if not isinstance(obj, Mapping):
        raise PredictionFormatError(f"{where}: expected a JSON object with file_name and predictions")
    file_name = obj.get("file_name")
    if not isinstance(file_name, str) or not file_name:
        raise PredictionFormatError(f"{where}: file_name must be the sample's path from the datasource root")
    if relpath is not None and _sample_file_or_none(file_name) != relpath:
        raise PredictionFormatError(
            f"{where}: file_name {file_name!r} does not match the file's path {relpath!r} "
            "(a sample's predictions go to <its path without extension>.json)"
        )
    return file_name, validate_predictions(obj.get("predictions"), schema, where=where)


def write_task(location: Location, task_name: str, schema: PredictionSchema) -> str:
    """Add ``task_name`` to ``tasks.json`` (keeping the tasks already listed) and write its ``schema.json``.

    Returns the URI of the task folder. Calling it again with the same arguments changes nothing.
    """
    problem = check_task_name(task_name)
    if problem:
        raise ValueError(f"task name {task_name!r} {problem}")
    tasks_rel = f"{PREDICTIONS_DIR}/tasks.json"
    tasks: list[str] = []
    if location.fs.exists(location.path(tasks_rel)):
        tasks = _read_tasks(location)
    if task_name not in tasks:
        artifacts.write_json(location, tasks_rel, [*tasks, task_name])
    artifacts.write_json(location, f"{PREDICTIONS_DIR}/{task_name}/schema.json", schema.to_json())
    return location.child_uri(PREDICTIONS_DIR, task_name)


def write_predictions(location: Location, task_name: str, predictions: Mapping[str, Sequence[Prediction]]) -> int:
    """Write one prediction file per sample key (``{key: [singleton, ...]}``); returns the number written.

    The files go out in one ``pipe`` call per batch, which s3fs sends concurrently (one PUT each).
    """
    files = {
        prediction_relpath(task_name, key): json.dumps(
            {"file_name": key, "predictions": list(preds)}, separators=(",", ":")
        ).encode()
        for key, preds in predictions.items()
    }
    if isinstance(location.fs, LocalFileSystem):
        for parent in {posixpath.dirname(location.path(rel)) for rel in files}:
            location.fs.makedirs(parent, exist_ok=True)
    items = list(files.items())
    for start in range(0, len(items), READ_BATCH):
        location.fs.pipe({location.path(rel): data for rel, data in items[start : start + READ_BATCH]})
    return len(files)


def _read_tasks(location: Location) -> list[str]:
    where = location.child_uri(PREDICTIONS_DIR, "tasks.json")
    try:
        tasks = artifacts.read_json(location, f"{PREDICTIONS_DIR}/tasks.json")
    except FileNotFoundError as exc:
        raise PredictionFormatError(f"{where}: not found") from exc
    except json.JSONDecodeError as exc:
        raise PredictionFormatError(f"{where}: not valid JSON: {exc}") from exc
    if not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks):
        raise PredictionFormatError(f"{where}: expected a JSON list of task names")
    return tasks


def list_tasks(location: Location) -> list[str]:
    """The task names in ``<location>/.lightly/predictions/tasks.json``."""
    return _read_tasks(location)


def load_schema(location: Location, task_name: str) -> PredictionSchema:
    """The validated ``schema.json`` of ``task_name``, which ``tasks.json`` must list."""
    tasks = _read_tasks(location)
    if task_name not in tasks:
        raise PredictionFormatError(
            f"{location.child_uri(PREDICTIONS_DIR, 'tasks.json')}: task {task_name!r} is not listed "
            f"(listed: {', '.join(tasks) or 'none'})"
        )
    where = location.child_uri(PREDICTIONS_DIR, task_name, "schema.json")
    try:
        obj = artifacts.read_json(location, f"{PREDICTIONS_DIR}/{task_name}/schema.json")
    except FileNotFoundError as exc:
        raise PredictionFormatError(f"{where}: not found; every task in tasks.json needs a schema.json") from exc
    except json.JSONDecodeError as exc:
        raise PredictionFormatError(f"{where}: not valid JSON: {exc}") from exc
    return parse_schema(obj, where=where)


def load_predictions(
    location: Location, task_name: str, keys: Iterable[str] | None = None
) -> tuple[PredictionSchema, dict[str, list[Prediction]]]:
    """Read and validate a task's predictions below ``location`` (a run folder, a dump output, a datasource).

    Returns ``(schema, {file_name: [singleton, ...]})``. With ``keys`` only those samples' files are read (no
    listing; a sample without a file is left out of the result), else every ``*.json`` of the task folder.
    Every file is validated against the schema; a bad one raises :class:`PredictionFormatError` naming it.
    """
    schema = load_schema(location, task_name)
    task = location.child(PREDICTIONS_DIR, task_name)
    if keys is None:
        found = location.fs.find(task.root, withdirs=False)
        prefix = task.root.rstrip("/") + "/"
        schema_path = task.path("schema.json")
        relpaths = sorted(
            p[len(prefix) :] for p in found if p.startswith(prefix) and p.endswith(".json") and p != schema_path
        )
    else:
        relpaths = [sample_file(k) for k in keys]
    result: dict[str, list[Prediction]] = {}
    for start in range(0, len(relpaths), READ_BATCH):
        batch = relpaths[start : start + READ_BATCH]
        contents = location.fs.cat([task.path(r) for r in batch], on_error="return")
        for rel in batch:
            data = contents.get(task.path(rel))
            where = task.child_uri(rel)
            if isinstance(data, FileNotFoundError) or (data is None and keys is not None):
                if keys is None:
                    raise PredictionFormatError(f"{where}: listed but could not be read")
                continue
            if isinstance(data, BaseException):
                raise PredictionFormatError(f"{where}: could not be read: {type(data).__name__}: {data}") from data
            try:
                obj = json.loads(data)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise PredictionFormatError(f"{where}: not valid JSON: {exc}") from exc
            file_name, preds = parse_prediction_file(obj, schema, where=where, relpath=rel)
            result[file_name] = preds
    return schema, result


def class_distribution(schema: PredictionSchema, predictions: Iterable[Sequence[Prediction]]) -> dict[str, int]:
    """Category name -> number of predicted objects (detection) or samples (classification), all categories."""
    counts: Counter[int] = Counter()
    for preds in predictions:
        counts.update(int(p["category_id"]) for p in preds)
    return {c.name: int(counts.get(c.id, 0)) for c in schema.categories}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
