"""One typed, validated run configuration built from the DAG's Params / trigger conf.

The key names and nesting follow the Lightly Worker's worker config where a key exists there
(``datasource.process_all``, ``stopping_condition.n_samples``, ``enable_corruptness_check``,
``remove_exact_duplicates``, ...) so its users can carry their configs over.

The dataclasses below are the single source of truth: :func:`parse_config` validates a conf against them and
:func:`param_schemas` derives the Airflow trigger form (JSON schema with titles and descriptions) from them.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import sqlalchemy.engine

INPUT_TYPES = ("images", "videos")
EMBEDDING_MODELS = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "convnext_tiny",
)
VIDEO_BACKENDS = ("pyav", "decord")
TRAINING_METHODS = ("simclr",)
DUMP_FORMATS = ("png", "jpeg")
WINDOW_MODES = ("none", "data_interval")
"""datasource.window: list everything, or only what was modified in the run's data interval (lightly_tasks.windows)."""
SUPPORTED_SCHEMES = ("file", "s3", "gs", "az")
DEFAULT_CONN_IDS = {"s3": "aws_default", "gs": "google_cloud_default", "az": "wasb_default"}
"""The Airflow connection used for a scheme when the conf names none."""
DEFAULT_MAX_OBJECT_BYTES = 512 * 2**20


class ConfigError(ValueError):
    """A conf key is unknown, has the wrong type or an impossible value; the message names the key."""


def form_option(
    title: str,
    description: str,
    *,
    check: Callable[[Any], str | None] | None = None,
    enum: tuple[Any, ...] | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: float | None = None,
) -> dict[str, Any]:
    """Field metadata: form title/description plus the value constraints shared by parser and schema."""
    return {
        "title": title,
        "description": description,
        "check": check,
        "enum": enum,
        "minimum": minimum,
        "maximum": maximum,
        "exclusive_minimum": exclusive_minimum,
    }


def _check_uri(value: str) -> str | None:
    if not value:
        return "is required, e.g. file:///data/images or s3://bucket/prefix"
    from lightly_tasks.windows import template_problem  # windows imports storage, which imports this module

    return _check_optional_uri(value) or template_problem(value)


def _check_optional_uri(value: str | None) -> str | None:
    if value is None or value == "":
        return None
    try:
        parts = urlsplit(value)
    except ValueError:
        return "is not a valid URI"
    if parts.scheme not in SUPPORTED_SCHEMES:
        supported = ", ".join(SUPPORTED_SCHEMES)
        return f"scheme {parts.scheme or '(none)'!r} is not supported; use one of: {supported}"
    if "@" in parts.netloc:
        return "must not carry credentials or a connection id; name an Airflow connection in the conn_id key"
    if parts.scheme != "file" and not parts.netloc:
        return f"names no bucket; expected {parts.scheme}://bucket/prefix"
    return None


def uri_scheme(uri: str) -> str:
    """The scheme of ``uri`` ('file' for a bare path)."""
    return urlsplit(uri).scheme or "file"


def _check_dataset_name(value: str) -> str | None:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", value or ""):
        return "must be 1-128 characters of letters, digits, '_', '.', '-' and start with a letter or digit"
    return None


@dataclass(frozen=True)
class DatasourceConfig:
    """Where the raw objects are and how to reach them."""

    uri: str = field(
        default="",
        metadata=form_option(
            "Datasource URI",
            "Folder or bucket prefix to curate, e.g. file:///data/images, s3://bucket/prefix, gs://bucket/prefix "
            "or az://container/prefix (Azure Blob). For buckets "
            "organised by date, a Jinja template rendered from the run's data interval names the folder of a "
            "scheduled or backfill run, e.g. s3://bucket/raw/{{ ds_nodash }}/ (variables: ds, ds_nodash, ts, "
            "ts_nodash, data_interval_start, data_interval_end); keys and the datapool stay relative to the "
            "part before the template.",
            check=_check_uri,
        ),
    )
    conn_id: str | None = field(
        default=None,
        metadata=form_option(
            "Connection id",
            "Airflow connection holding the datasource's credentials (for S3: keys, and endpoint_url and "
            "region_name in its extras for any S3-compatible store). Empty: aws_default for s3://, "
            "google_cloud_default for gs://, wasb_default for az://. Not used for file:// URIs.",
        ),
    )
    process_all: bool = field(
        default=False,
        metadata=form_option(
            "Process all",
            "Reconsider every object, not only those the datapool has not seen. Samples already in the dataset "
            "still count as selected.",
        ),
    )
    window: str = field(
        default="none",
        metadata=form_option(
            "Time window",
            "none: list every object. data_interval: list only objects last modified inside the run's data "
            "interval [start, end), as scheduled and backfill runs have (airflow backfill create); a run "
            "without one fails.",
            enum=WINDOW_MODES,
        ),
    )


@dataclass(frozen=True)
class StoppingConditionConfig:
    """When selection stops: whichever condition is met first."""

    n_samples: int | None = field(
        default=None,
        metadata=form_option("Number of samples", "Select at most this many samples in this run.", minimum=1),
    )
    proportion_samples: float | None = field(
        default=None,
        metadata=form_option(
            "Proportion of samples",
            "Select at most this fraction (0 < p <= 1) of the run's candidate samples, rounded up.",
            exclusive_minimum=0.0,
            maximum=1.0,
        ),
    )
    min_distance: float | None = field(
        default=None,
        metadata=form_option(
            "Minimum distance",
            "Stop when the farthest remaining sample is closer than this (Euclidean, on L2-normalised "
            "embeddings: 0..2) to every selected or existing sample.",
            minimum=0.0,
        ),
    )


@dataclass(frozen=True)
class EmbeddingConfig:
    """The model that turns images into vectors."""

    model: str = field(
        default="resnet18",
        metadata=form_option(
            "Embedding model",
            "torchvision architecture used as the embedding backbone (classification head removed).",
            enum=EMBEDDING_MODELS,
        ),
    )
    checkpoint: str | None = field(
        default=None,
        metadata=form_option(
            "Checkpoint URI",
            "URI of a torch state_dict for the model. Without one the model is a fixed-seed random "
            "initialisation: deterministic, but far weaker than trained weights.",
            check=_check_optional_uri,
        ),
    )
    image_size: int = field(
        default=224,
        metadata=form_option(
            "Image size",
            "Side in pixels of the square, decoded images kept in the run's cache and fed to the model.",
            minimum=32,
            maximum=1024,
        ),
    )


@dataclass(frozen=True)
class TrainingConfig:
    """Self-supervised training of the embedding model on the run's decoded images (enable_training)."""

    method: str = field(
        default="simclr",
        metadata=form_option(
            "Method",
            "simclr: contrastive (NT-Xent, temperature 0.2) between two random views of each image, the other "
            "images of the batch as negatives.",
            enum=TRAINING_METHODS,
        ),
    )
    epochs: int = field(
        default=10,
        metadata=form_option(
            "Epochs",
            "Passes over the run's non-corrupt images. Each pass reads the decoded cache in the artifacts "
            "location, never the datasource. A retried task resumes after the last finished epoch.",
            minimum=1,
            maximum=1000,
        ),
    )
    batch_size: int = field(
        default=64,
        metadata=form_option("Batch size", "Images per training step (two views each).", minimum=2, maximum=4096),
    )
    lr: float = field(
        default=3e-4,
        metadata=form_option(
            "Learning rate",
            "Peak AdamW learning rate: linear warm-up over the first 10 % of the steps, then cosine decay. "
            "1e-3 was worse in short runs (see bench/training.py).",
            exclusive_minimum=0.0,
            maximum=1.0,
        ),
    )
    image_size: int | None = field(
        default=None,
        metadata=form_option(
            "Training image size",
            "Side in pixels of the random crops trained on; they are cut from the cached images, so at most "
            "embedding.image_size. Empty: embedding.image_size. Smaller trains faster (time grows with its "
            "square) but the embedding then sees another scale.",
            minimum=16,
            maximum=1024,
        ),
    )


@dataclass(frozen=True)
class DumpConfig:
    """Where the selected originals are copied, if anywhere."""

    output: str | None = field(
        default=None,
        metadata=form_option(
            "Dump output URI",
            "If set, the selected objects are copied here under their relative keys (with the "
            "artifacts_conn_id connection for s3://). For videos, the selected frames are written as images "
            "under their frame names.",
            check=_check_optional_uri,
        ),
    )
    format: str = field(
        default="png",
        metadata=form_option(
            "Frame image format",
            "Image format of dumped video frames (images are copied as they are).",
            enum=DUMP_FORMATS,
        ),
    )
    image_size: int | None = field(
        default=None,
        metadata=form_option(
            "Frame image size",
            "If set, dumped video frames are resized so that their longer side has this many pixels "
            "(aspect ratio kept). Empty: full resolution.",
            minimum=8,
            maximum=8192,
        ),
    )


@dataclass(frozen=True)
class VideoConfig:
    """How videos are decoded (input_type: videos)."""

    frame_stride: int = field(
        default=1,
        metadata=form_option(
            "Frame stride",
            "Use every k-th frame of each video as a sample (1: every frame). All frames are still decoded.",
            minimum=1,
        ),
    )
    timeout_seconds: float = field(
        default=1800.0,
        metadata=form_option(
            "Time limit per video",
            "Seconds a single video may take to count or decode. A video over it keeps the frames decoded so "
            "far; the rest are listed as corrupt with the reason 'timeout', and the run goes on.",
            exclusive_minimum=0.0,
        ),
    )
    backend: str = field(
        default="pyav",
        metadata=form_option(
            "Decoder",
            "pyav streams each video with ranged reads; decord reads each whole video into memory first.",
            enum=VIDEO_BACKENDS,
        ),
    )
    isolate_decoder: bool = field(
        default=True,
        metadata=form_option(
            "Decode in a child process",
            "Decode videos in a separate process, so that a decoder crash (segfault, abort, out of memory) or "
            "hang marks that one video corrupt ('decoder crashed') and the shard goes on; frame dumps skip that "
            "video's frames. Off: decode in the task's own process (slightly faster; a crash fails the task).",
        ),
    )


PRETAGGING_TASK_TYPES = ("object-detection", "classification")


def _check_pretagging_model(value: str) -> str | None:
    if "://" in (value or ""):
        return _check_optional_uri(value)
    if value and not re.fullmatch(r"[a-z][a-z0-9_]*", value):
        return "must be a torchvision architecture name (e.g. fasterrcnn_mobilenet_v3_large_320_fpn) or a URI"
    return None


@dataclass(frozen=True)
class PretaggingConfig:
    """The model that pretags the run's samples (pretagging: true); see lightly_tasks/pretagging.py."""

    model: str = field(
        default="",
        metadata=form_option(
            "Model",
            "A torchvision detection architecture (fasterrcnn_mobilenet_v3_large_320_fpn, "
            "ssdlite320_mobilenet_v3_large, retinanet_resnet50_fpn, ...) or classification architecture "
            "(resnet50, ...) used with weights; or the URI of a TorchScript file (torchvision's input/output "
            "conventions; categories from the categories key or a schema.json stored in the file).",
            check=_check_pretagging_model,
        ),
    )
    weights: str | None = field(
        default=None,
        metadata=form_option(
            "Weights URI",
            "URI of a torch.save'd state_dict of the architecture, or of {state_dict, categories}; read with the "
            "artifacts connection. Required for an architecture: no weights are downloaded at run time.",
            check=_check_optional_uri,
        ),
    )
    task_name: str = field(
        default="pretagging",
        metadata=form_option(
            "Task name",
            "Name of the prediction task: the folder under .lightly/predictions/ and the name in tasks.json.",
            check=_check_dataset_name,
        ),
    )
    task_type: str = field(
        default="object-detection",
        metadata=form_option(
            "Task type", "What the model predicts, as Lightly's schema.json says it.", enum=PRETAGGING_TASK_TYPES
        ),
    )
    categories: tuple[str, ...] | None = field(
        default=None,
        metadata=form_option(
            "Category names",
            "Names of the model's classes in class-index order (id 0 first; torchvision detectors count the "
            "background as class 0). Empty: the weights' or TorchScript file's own, torchvision's COCO/ImageNet "
            "names when the class count matches, else class_<id>.",
        ),
    )
    score_threshold: float = field(
        default=0.5,
        metadata=form_option(
            "Score threshold",
            "Object detection: detections scoring below this are dropped. Classification keeps every sample's "
            "prediction with its probabilities.",
            minimum=0.0,
            maximum=1.0,
        ),
    )
    batch_size: int = field(
        default=16,
        metadata=form_option("Batch size", "Images per model call.", minimum=1, maximum=4096),
    )


SELECTION_INPUT_TYPES = ("EMBEDDINGS", "SCORES", "METADATA", "PREDICTIONS", "RANDOM")
SELECTION_STRATEGY_TYPES = ("DIVERSITY", "WEIGHTS", "THRESHOLD", "BALANCE", "SIMILARITY", "TYPICALITY")
THRESHOLD_OPERATIONS = ("SMALLER", "SMALLER_EQUAL", "BIGGER", "BIGGER_EQUAL")
ACTIVE_LEARNING_SCORES = (
    "uncertainty_least_confidence",
    "uncertainty_margin",
    "uncertainty_entropy",
    "object_frequency",
)
BALANCE_DISTRIBUTIONS = ("TARGET", "UNIFORM", "INPUT")
STRATEGY_INPUTS = {
    "DIVERSITY": ("EMBEDDINGS",),
    "SIMILARITY": ("EMBEDDINGS",),
    "TYPICALITY": ("EMBEDDINGS",),
    "WEIGHTS": ("SCORES", "METADATA", "RANDOM"),
    "THRESHOLD": ("SCORES", "METADATA"),
    "BALANCE": ("PREDICTIONS", "METADATA"),
}
"""The inputs each strategy accepts, as in the Lightly Worker's input/strategy combinations."""


@dataclass(frozen=True)
class SelectionInputConfig:
    """What a selection strategy reads (the Lightly Worker's ``input``)."""

    type: str = field(
        default="",
        metadata=form_option(
            "Input type",
            "EMBEDDINGS, SCORES (active-learning scores of a prediction task), METADATA (e.g. lightly.sharpness), "
            "PREDICTIONS (class distribution of a task) or RANDOM.",
            enum=SELECTION_INPUT_TYPES,
        ),
    )
    task: str | None = field(
        default=None, metadata=form_option("Prediction task", "SCORES / PREDICTIONS: name of the prediction task.")
    )
    score: str | None = field(
        default=None,
        metadata=form_option(
            "Score", "SCORES: the active-learning score computed from the predictions.", enum=ACTIVE_LEARNING_SCORES
        ),
    )
    key: str | None = field(
        default=None,
        metadata=form_option("Metadata key", "METADATA: e.g. lightly.sharpness, lightly.luminance, lightly.snr."),
    )
    name: str | None = field(
        default=None,
        metadata=form_option("Predictions name", "PREDICTIONS: CLASS_DISTRIBUTION.", enum=("CLASS_DISTRIBUTION",)),
    )
    random_seed: int | None = field(default=None, metadata=form_option("Random seed", "RANDOM: seed (default 0)."))
    dataset_id: str | None = field(
        default=None,
        metadata=form_option(
            "Query dataset", "SIMILARITY: dataset (in this store) holding tag_name; empty: this dataset."
        ),
    )
    tag_name: str | None = field(
        default=None, metadata=form_option("Query tag", "SIMILARITY: the tag whose samples are the query set.")
    )
    file_names: tuple[str, ...] | None = field(
        default=None,
        metadata=form_option(
            "Query file names",
            "SIMILARITY (extension of the Lightly Worker's config): keys of samples of the dataset or of this "
            "run that form the query set, instead of a tag.",
        ),
    )
    categories: tuple[str, ...] | None = field(
        default=None,
        metadata=form_option("Categories", "SCORES / PREDICTIONS: only predictions of these category names count."),
    )


@dataclass(frozen=True)
class SelectionStrategyConfig:
    """How a selection strategy uses its input (the Lightly Worker's ``strategy``)."""

    type: str = field(
        default="",
        metadata=form_option(
            "Strategy type",
            "DIVERSITY, WEIGHTS, THRESHOLD, BALANCE, SIMILARITY or TYPICALITY.",
            enum=SELECTION_STRATEGY_TYPES,
        ),
    )
    strength: float = field(
        default=1.0,
        metadata=form_option(
            "Strength",
            "Exponent of this strategy's objective in the product of all objectives; negative inverts it.",
            minimum=-1e9,
            maximum=1e9,
        ),
    )
    stopping_condition_minimum_distance: float | None = field(
        default=None,
        metadata=form_option(
            "Minimum distance",
            "DIVERSITY: samples closer than this to a selected or existing sample are not selected.",
            minimum=0.0,
        ),
    )
    threshold: float | None = field(
        default=None, metadata=form_option("Threshold", "THRESHOLD: the value compared to.")
    )
    operation: str | None = field(
        default=None,
        metadata=form_option(
            "Operation", "THRESHOLD: keep samples whose input is <operation> threshold.", enum=THRESHOLD_OPERATIONS
        ),
    )
    target: dict[str, float] | None = field(
        default=None,
        metadata=form_option("Target", "BALANCE: target share of each category name (0..1, summing to at most 1)."),
    )
    distribution: str | None = field(
        default=None,
        metadata=form_option(
            "Distribution",
            "BALANCE: TARGET (the target, default), UNIFORM (equal shares) or INPUT (the candidates' shares).",
            enum=BALANCE_DISTRIBUTIONS,
        ),
    )
    num_nearest_neighbors: int | None = field(
        default=None,
        metadata=form_option(
            "Nearest neighbours", "TYPICALITY: neighbours whose mean distance defines it (default 20).", minimum=2
        ),
    )
    stopping_condition_minimum_typicality: float | None = field(
        default=None,
        metadata=form_option(
            "Minimum typicality",
            "TYPICALITY: stop before a pick less typical than this (0..1].",
            exclusive_minimum=0.0,
            maximum=1.0,
        ),
    )
    stopping_condition_max_sum: float | None = field(
        default=None,
        metadata=form_option(
            "Maximum sum", "WEIGHTS: stop once the selected samples' inputs sum to this.", minimum=0.0
        ),
    )


@dataclass(frozen=True)
class SelectionStrategyEntry:
    """One objective of the selection: an input and a strategy, as in the Lightly Worker's config."""

    input: SelectionInputConfig = field(
        default_factory=SelectionInputConfig, metadata=form_option("Input", "type, task, score, key, name, ...")
    )
    strategy: SelectionStrategyConfig = field(
        default_factory=SelectionStrategyConfig, metadata=form_option("Strategy", "type, strength, threshold, ...")
    )


@dataclass(frozen=True)
class SelectionConfig:
    """The Lightly Worker's ``selection_config``: paste it unchanged."""

    n_samples: int | None = field(
        default=None,
        metadata=form_option(
            "Number of samples", "Replaces stopping_condition.n_samples/proportion_samples when set.", minimum=1
        ),
    )
    proportion_samples: float | None = field(
        default=None,
        metadata=form_option(
            "Proportion of samples",
            "Replaces stopping_condition.n_samples/proportion_samples when set.",
            exclusive_minimum=0.0,
            maximum=1.0,
        ),
    )
    strategies: tuple[SelectionStrategyEntry, ...] = field(
        default=(),
        metadata=form_option(
            "Strategies",
            "A JSON array of {input: {...}, strategy: {...}} objectives combined greedily into one (the product "
            "of each objective to the power of its strength; THRESHOLD strategies filter first). Empty: "
            "farthest-first diversity on the embeddings.",
        ),
    )


def _default_stopping_condition() -> StoppingConditionConfig:
    return StoppingConditionConfig(n_samples=100)


@dataclass(frozen=True)
class RunConfig:
    """Everything one curation run needs to know; build it with :func:`parse_config`."""

    datasource: DatasourceConfig = field(
        default_factory=DatasourceConfig,
        metadata=form_option("Datasource", "uri (required), conn_id, process_all, window."),
    )
    dataset: str = field(
        default="",
        metadata=form_option(
            "Dataset",
            "Name of the dataset in the dataset store that this run creates or grows.",
            check=_check_dataset_name,
        ),
    )
    input_type: str = field(
        default="images",
        metadata=form_option("Input type", "Kind of objects to curate.", enum=INPUT_TYPES),
    )
    stopping_condition: StoppingConditionConfig = field(
        default_factory=_default_stopping_condition,
        metadata=form_option(
            "Stopping condition",
            "n_samples, proportion_samples and/or min_distance; selection stops at the first one reached.",
        ),
    )
    selection_config: SelectionConfig = field(
        default_factory=SelectionConfig,
        metadata=form_option(
            "Selection config",
            "The Lightly Worker's selection_config (n_samples, proportion_samples, strategies), pasted unchanged.",
        ),
    )
    enable_corruptness_check: bool = field(
        default=True,
        metadata=form_option(
            "Corruptness check",
            "Also run the integrity pass (e.g. PNG chunk checksums) before decoding. Objects that cannot be "
            "decoded at all (empty, truncated, not an image, too many pixels) are always excluded and listed.",
        ),
    )
    remove_exact_duplicates: bool = field(
        default=True,
        metadata=form_option(
            "Remove exact duplicates",
            "Drop objects whose bytes equal an earlier object's or a dataset sample's (SHA-256).",
        ),
    )
    enable_training: bool = field(
        default=False,
        metadata=form_option(
            "Self-supervised training",
            "Train the embedding model on this run's non-corrupt images first (see training; from "
            "embedding.checkpoint if set, else from random weights); embedding then uses the trained weights, "
            "saved as <run>/training/backbone.pt for embedding.checkpoint in later runs.",
        ),
    )
    training: TrainingConfig = field(
        default_factory=TrainingConfig,
        metadata=form_option("Training", "method, epochs, batch_size, lr, image_size; used when enable_training."),
    )
    embedding: EmbeddingConfig = field(
        default_factory=EmbeddingConfig,
        metadata=form_option("Embedding", "model, checkpoint, image_size."),
    )
    batch_size: int = field(
        default=32,
        metadata=form_option("Batch size", "Images per embedding batch.", minimum=1, maximum=4096),
    )
    num_shards: int = field(
        default=0,
        metadata=form_option(
            "Number of shards",
            "Parallel decode/embedding tasks. 0 picks one shard per 2,000 objects (at most 64).",
            minimum=0,
            maximum=1024,
        ),
    )
    artifacts_root: str = field(
        default="",
        metadata=form_option(
            "Artifacts root URI",
            "Where tables, the decoded cache, reports and exports go: a folder or an s3://, gs:// or az:// "
            "prefix. "
            "Empty: $LIGHTLY_ARTIFACTS_ROOT or <LIGHTLY_HOME>/artifacts.",
            check=_check_optional_uri,
        ),
    )
    artifacts_conn_id: str | None = field(
        default=None,
        metadata=form_option(
            "Artifacts connection id",
            "Airflow connection for an s3://, gs:// or az:// artifacts root, dump output and checkpoint. Empty: "
            "the datasource's connection, unless the artifacts root is on another kind of store (then that "
            "store's default connection).",
        ),
    )
    max_object_bytes: int = field(
        default=DEFAULT_MAX_OBJECT_BYTES,
        metadata=form_option(
            "Maximum object size",
            "Objects larger than this many bytes (as listed) are not read; they are reported as corrupt with "
            "the reason 'too large'.",
            minimum=1,
        ),
    )
    store_url: str = field(
        default="",
        metadata=form_option(
            "Dataset store URL",
            "SQLAlchemy URL of the dataset store. Empty: $LIGHTLY_STORE_URL or a SQLite file in LIGHTLY_HOME.",
        ),
    )
    video: VideoConfig = field(
        default_factory=VideoConfig,
        metadata=form_option("Video", "frame_stride, timeout_seconds, backend, isolate_decoder (input_type: videos)."),
    )
    selected_sequence_length: int = field(
        default=1,
        metadata=form_option(
            "Selected sequence length",
            "Videos only: split each video into runs of this many consecutive (sampled) frames and select "
            "whole runs, compared by their mean embedding. stopping_condition.n_samples counts frames and "
            "must be a multiple of it. 1: select single frames.",
            minimum=1,
        ),
    )
    pretagging: bool = field(
        default=False,
        metadata=form_option(
            "Pretagging",
            "Run pretagging_config's model over the run's non-corrupt samples (from the decoded cache) and write "
            "its predictions in Lightly's format to <run>/.lightly/predictions/, and those of the selected "
            "samples to <dump.output>/.lightly/predictions/. The Lightly Worker's key.",
        ),
    )
    pretagging_config: PretaggingConfig = field(
        default_factory=PretaggingConfig,
        metadata=form_option(
            "Pretagging model",
            "model, weights, task_name, task_type, categories, score_threshold, batch_size; used when "
            "pretagging. (The Lightly Worker's pretagging_config is a min-requirements file; here it is the model.)",
        ),
    )
    dump: DumpConfig = field(default_factory=DumpConfig, metadata=form_option("Dump", "output, format, image_size."))
    keep_cache: bool = field(
        default=False,
        metadata=form_option(
            "Keep decoded cache",
            "Keep the run's decoded image cache after a successful run (it is deleted by default).",
        ),
    )

    def redacted(self) -> dict[str, Any]:
        """The config as a plain dict with credentials removed from every URI/URL, safe for logs and reports."""
        return _redact_tree(dataclasses.asdict(self))


def _redact_tree(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _redact_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redact_tree(v) for v in value]
    if isinstance(value, str) and "://" in value:
        return redact_uri(value)
    return value


_DATABASE_DIALECTS = frozenset({"postgresql", "postgres", "mysql", "mariadb", "sqlite", "mssql", "oracle"})
_SECRET_QUERY_KEYS = frozenset(
    {
        "password",
        "passwd",
        "pwd",
        "secret",
        "token",
        "sig",
        "signature",
        "x-amz-signature",
        "x-amz-security-token",
        "x-amz-credential",
        "access_key",
        "secret_key",
        "aws_secret_access_key",
        "account_key",
        "sas_token",
        "key",
    }
)


def redact_uri(uri: str) -> str:
    """``uri`` with every credential replaced by ``***``: user-info passwords, lone tokens, secret query values.

    Database URLs are parsed the way SQLAlchemy parses them, so a password holding ``/`` or ``#`` (which
    SQLAlchemy accepts unencoded) is still hidden.
    """
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    if scheme.split("+", 1)[0] in _DATABASE_DIALECTS:
        try:
            uri = sqlalchemy.engine.make_url(uri).render_as_string(hide_password=True)
        except Exception:
            return f"{scheme}://***"
    try:
        parts = urlsplit(uri)
    except ValueError:
        return "***"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0] if ":" in userinfo else ""
        netloc = f"{user}:***@{host}" if user else f"***@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(k.lower() in _SECRET_QUERY_KEYS for k, _ in pairs):
            query = urlencode([(k, "***" if k.lower() in _SECRET_QUERY_KEYS else v) for k, v in pairs], safe="*/:")
    if netloc == parts.netloc and query == parts.query:
        return uri
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def lightly_home() -> Path:
    """Folder for the embedded defaults: $LIGHTLY_HOME, else $AIRFLOW_HOME/lightly, else ~/.lightly-airflow."""
    if os.environ.get("LIGHTLY_HOME"):
        return Path(os.environ["LIGHTLY_HOME"])
    if os.environ.get("AIRFLOW_HOME"):
        return Path(os.environ["AIRFLOW_HOME"]) / "lightly"
    return Path.home() / ".lightly-airflow"


def _resolve_defaults(cfg: RunConfig) -> RunConfig:
    artifacts_root = (
        cfg.artifacts_root
        or os.environ.get("LIGHTLY_ARTIFACTS_ROOT")
        or ((lightly_home() / "artifacts").resolve().as_uri())
    )
    store_url = (
        cfg.store_url or os.environ.get("LIGHTLY_STORE_URL") or (f"sqlite:///{(lightly_home() / 'store.db').resolve()}")
    )
    datasource_conn_id = cfg.datasource.conn_id or DEFAULT_CONN_IDS.get(uri_scheme(cfg.datasource.uri))
    # the datasource's connection, unless the artifacts live on another kind of object store
    same_scheme = uri_scheme(artifacts_root) in (uri_scheme(cfg.datasource.uri), "file")
    artifacts_conn_id = (
        cfg.artifacts_conn_id
        or (datasource_conn_id if same_scheme else None)
        or DEFAULT_CONN_IDS.get(uri_scheme(artifacts_root))
    )
    return dataclasses.replace(
        cfg,
        datasource=dataclasses.replace(cfg.datasource, conn_id=datasource_conn_id),
        artifacts_root=artifacts_root.rstrip("/"),
        artifacts_conn_id=artifacts_conn_id,
        store_url=store_url,
    )


def parse_config(conf: Mapping[str, Any]) -> RunConfig:
    """Validate a trigger conf / Params mapping and build the typed :class:`RunConfig`.

    Raises :class:`ConfigError` naming the offending key for unknown keys, wrong types and impossible values.
    Empty ``artifacts_root`` / ``store_url`` are resolved to the embedded defaults, empty connection ids to
    the scheme's default connection (``aws_default`` for s3://) or, for the artifacts, the datasource's.
    """
    if isinstance(conf.get("pretagging_config"), str):
        raise ConfigError(
            "pretagging_config: expected an object {model, weights, task_name, ...}; the Lightly Worker's "
            "min-requirements file is not supported"
        )
    cfg = parse_dataclass(RunConfig, conf, prefix="")
    cfg = _merge_selection_counts(cfg)
    stop = cfg.stopping_condition
    if stop.n_samples is None and stop.proportion_samples is None and stop.min_distance is None:
        raise ConfigError("stopping_condition: set at least one of n_samples, proportion_samples, min_distance")
    if cfg.selected_sequence_length > 1:
        if cfg.input_type != "videos":
            raise ConfigError("selected_sequence_length: sequences can only be selected from videos")
        if stop.n_samples is not None and stop.n_samples % cfg.selected_sequence_length:
            raise ConfigError(
                f"stopping_condition.n_samples: counts frames and must be a multiple of selected_sequence_length="
                f"{cfg.selected_sequence_length}; got {stop.n_samples}"
            )
    if cfg.training.image_size is not None and cfg.training.image_size > cfg.embedding.image_size:
        raise ConfigError(
            f"training.image_size: training crops are cut from the cache at embedding.image_size="
            f"{cfg.embedding.image_size}, so it must be at most that; got {cfg.training.image_size}"
        )
    _check_strategies(cfg)
    _check_pretagging(cfg)
    return _resolve_defaults(cfg)


def _check_pretagging(cfg: RunConfig) -> None:
    """With pretagging on, a model must be named, and an architecture needs its weights (no hub downloads)."""
    pre = cfg.pretagging_config
    if not cfg.pretagging:
        return
    if not pre.model:
        raise ConfigError(
            "pretagging_config.model: pretagging is on but no model is set; give a torchvision architecture "
            "with pretagging_config.weights, or the URI of a TorchScript file"
        )
    if "://" not in pre.model and not pre.weights:
        raise ConfigError(
            f"pretagging_config.weights: {pre.model!r} needs a weights URI (a torch.save'd state_dict); there is "
            "no built-in pretagging model and no weights are downloaded at run time"
        )
    if "://" in pre.model and pre.weights:
        raise ConfigError("pretagging_config.weights: a TorchScript model carries its weights; leave this empty")


def _merge_selection_counts(cfg: RunConfig) -> RunConfig:
    """``selection_config.n_samples`` / ``proportion_samples``, when either is set, replace the stopping
    condition's two counts (so a pasted Lightly config selects what it says, not also at most the default 100)."""
    sel = cfg.selection_config
    if sel.n_samples is None and sel.proportion_samples is None:
        return cfg
    stop = dataclasses.replace(
        cfg.stopping_condition, n_samples=sel.n_samples, proportion_samples=sel.proportion_samples
    )
    return dataclasses.replace(cfg, stopping_condition=stop)


def _check_strategies(cfg: RunConfig) -> None:
    """Cross-key checks of ``selection_config.strategies``; the message names the strategy and its key."""
    strategies = cfg.selection_config.strategies
    if strategies and cfg.selected_sequence_length > 1:
        raise ConfigError(
            "selection_config.strategies: cannot be combined with selected_sequence_length > 1 (sequences are "
            "selected by diversity only)"
        )
    for i, entry in enumerate(strategies):
        where = f"selection_config.strategies[{i}]"
        inp, strat = entry.input, entry.strategy
        accepted = STRATEGY_INPUTS[strat.type]
        if inp.type not in accepted:
            raise ConfigError(
                f"{where}.input.type: {strat.type} works on {' or '.join(accepted)} inputs, not {inp.type}"
            )
        required = {
            "SCORES": ("task", "score"),
            "METADATA": ("key",),
            "PREDICTIONS": ("task", "name"),
        }.get(inp.type, ())
        for key in required:
            if not getattr(inp, key):
                raise ConfigError(f"{where}.input.{key}: is required for {inp.type} inputs")
        if strat.type == "THRESHOLD":
            for key in ("threshold", "operation"):
                if getattr(strat, key) is None:
                    raise ConfigError(f"{where}.strategy.{key}: is required for THRESHOLD")
        if strat.type == "BALANCE":
            distribution = strat.distribution or "TARGET"
            if distribution == "TARGET" and not strat.target:
                raise ConfigError(f"{where}.strategy.target: is required for BALANCE (or set distribution)")
            for name, share in (strat.target or {}).items():
                if not 0 <= share <= 1:
                    raise ConfigError(f"{where}.strategy.target.{name}: must be in [0, 1]; got {share}")
            if sum((strat.target or {}).values()) > 1 + 1e-6:
                raise ConfigError(f"{where}.strategy.target: shares must sum to at most 1")
        if strat.type == "SIMILARITY" and not (inp.tag_name or inp.file_names):
            raise ConfigError(f"{where}.input.tag_name: SIMILARITY needs a query set: tag_name or file_names")
        own = {
            "stopping_condition_minimum_distance": "DIVERSITY",
            "threshold": "THRESHOLD",
            "operation": "THRESHOLD",
            "target": "BALANCE",
            "distribution": "BALANCE",
            "num_nearest_neighbors": "TYPICALITY",
            "stopping_condition_minimum_typicality": "TYPICALITY",
            "stopping_condition_max_sum": "WEIGHTS",
        }
        for key, owner in own.items():
            if getattr(strat, key) is not None and strat.type != owner:
                raise ConfigError(f"{where}.strategy.{key}: only applies to {owner}, not {strat.type}")


def conf_strings(value: Any, key: str = "") -> list[tuple[str, str]]:
    """(dotted key, string) of every string inside a JSON-like conf, e.g. ``("datasource.uri", "s3://b/raw")``."""
    if isinstance(value, Mapping):
        return [pair for k, v in value.items() for pair in conf_strings(v, f"{key}.{k}" if key else str(k))]
    if isinstance(value, list):
        return [pair for i, v in enumerate(value) for pair in conf_strings(v, f"{key}[{i}]")]
    return [(key, value)] if isinstance(value, str) else []


def merge_conf(base: Mapping[str, Any], conf: Mapping[str, Any]) -> dict[str, Any]:
    """``conf`` over ``base``: object-valued keys (datasource, stopping_condition, ...) merge key by key.

    The way a run's Params fill what its conf leaves out, so a conf that sets only ``datasource.uri`` keeps
    the base's other datasource settings.
    """
    merged = dict(base)
    for key, value in conf.items():
        if isinstance(merged.get(key), Mapping) and isinstance(value, Mapping):
            value = {**merged[key], **value}
        merged[key] = value
    return merged


def parse_dataclass(cls: type, conf: Any, *, prefix: str) -> Any:
    """An instance of the config dataclass ``cls`` from the mapping ``conf``, validated field by field.

    Unknown keys, wrong types and values outside a field's :func:`form_option` constraints raise
    :class:`ConfigError` naming the key with ``prefix`` (``"video."``).
    """
    where = prefix.rstrip(".") or "conf"
    if not isinstance(conf, Mapping):
        raise ConfigError(f"{where}: expected an object, got {type(conf).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(conf) - set(fields))
    if unknown:
        raise ConfigError(
            f"{prefix}{unknown[0]}: unknown key (known keys{' of ' + where if prefix else ''}: "
            f"{', '.join(sorted(fields))})"
        )
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for name, f in fields.items():
        key = f"{prefix}{name}"
        if name in conf:
            values[name] = _parse_value(hints[name], conf[name], key=key, meta=f.metadata)
        elif dataclasses.is_dataclass(hints[name]):
            # validate a nested default too, so a missing required sub-key is named
            values[name] = parse_dataclass(hints[name], _field_default(f), prefix=f"{key}.")
    try:
        obj = cls(**values)
    except TypeError as exc:  # pragma: no cover - dataclass signature mismatch is a programming error
        raise ConfigError(f"{where}: {exc}") from exc
    for name, f in fields.items():
        message = _check_constraints(getattr(obj, name), f.metadata)
        if message:
            raise ConfigError(f"{prefix}{name}: {message}")
    return obj


def _parse_value(tp: Any, value: Any, *, key: str, meta: Mapping[str, Any]) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _parse_value(args[0], value, key=key, meta=meta)
    if dataclasses.is_dataclass(tp):
        return parse_dataclass(tp, value, prefix=f"{key}.")
    if origin is tuple:  # tuple[X, ...]: a JSON array
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        item = typing.get_args(tp)[0]
        return tuple(_parse_value(item, v, key=f"{key}[{i}]", meta={}) for i, v in enumerate(value))
    if origin is dict:  # dict[str, X]: a JSON object with free keys
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected an object, got {value!r}")
        item = typing.get_args(tp)[1]
        return {str(k): _parse_value(item, v, key=f"{key}.{k}", meta={}) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value.strip()
    raise ConfigError(f"{key}: unsupported type {tp!r}")  # pragma: no cover


def _check_constraints(value: Any, meta: Mapping[str, Any]) -> str | None:
    if value is None or dataclasses.is_dataclass(value):
        return meta.get("check")(value) if meta.get("check") and value is None else None
    if meta.get("enum") and value not in meta["enum"]:
        return f"must be one of {', '.join(map(str, meta['enum']))}; got {value!r}"
    if meta.get("minimum") is not None and value < meta["minimum"]:
        return f"must be >= {meta['minimum']}; got {value!r}"
    if meta.get("maximum") is not None and value > meta["maximum"]:
        return f"must be <= {meta['maximum']}; got {value!r}"
    if meta.get("exclusive_minimum") is not None and value <= meta["exclusive_minimum"]:
        return f"must be > {meta['exclusive_minimum']}; got {value!r}"
    if meta.get("check"):
        return meta["check"](value)
    return None


def _json_schema(tp: Any, meta: Mapping[str, Any], default: Any) -> dict[str, Any]:
    origin = typing.get_origin(tp)
    nullable = False
    if origin in (typing.Union, types.UnionType):
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
        nullable = True
    schema: dict[str, Any] = {}
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        schema = {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                f.name: _json_schema(hints[f.name], f.metadata, _field_default(f)) for f in dataclasses.fields(tp)
            },
        }
    elif typing.get_origin(tp) in (tuple, dict):
        is_list = typing.get_origin(tp) is tuple  # tuple[X, ...] is a JSON array, dict[str, X] a free object
        json_type = "array" if is_list else "object"
        schema["type"] = [json_type, "null"] if nullable else json_type
        item = _json_schema(typing.get_args(tp)[0 if is_list else 1], {}, None)
        for unused in ("title", "description", "default"):
            item.pop(unused)
        schema["items" if is_list else "additionalProperties"] = item
    else:
        json_type = {bool: "boolean", int: "integer", float: "number", str: "string"}[tp]
        schema["type"] = [json_type, "null"] if nullable else json_type
        if meta.get("enum"):
            schema["enum"] = list(meta["enum"]) + ([None] if nullable else [])
        if meta.get("minimum") is not None:
            schema["minimum"] = meta["minimum"]
        if meta.get("maximum") is not None:
            schema["maximum"] = meta["maximum"]
        if meta.get("exclusive_minimum") is not None:
            schema["exclusiveMinimum"] = meta["exclusive_minimum"]
    schema["title"] = meta.get("title", "")
    schema["description"] = meta.get("description", "")
    schema["default"] = default
    return schema


def _field_default(f: dataclasses.Field) -> Any:
    value = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
    return _json_value(dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value)


def _json_value(value: Any) -> Any:
    """``value`` with tuples as lists, the way JSON (and the form's schema validation) sees them."""
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    return value


def param_schemas() -> dict[str, dict[str, Any]]:
    """JSON schema (with ``default``, ``title``, ``description``) of every top-level key, for Airflow Params."""
    hints = typing.get_type_hints(RunConfig)
    return {f.name: _json_schema(hints[f.name], f.metadata, _field_default(f)) for f in dataclasses.fields(RunConfig)}
