"""The Lightly predictions format: write, load back, validate (local folder and the S3 emulator)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lightly_tasks.predictions import (
    PredictionFormatError,
    PredictionSchema,
    class_distribution,
    list_tasks,
    load_predictions,
    load_schema,
    write_predictions,
    write_task,
)
from lightly_tasks.storage import Location, location_from_uri
from tests.s3_server import S3Emulator

DETECTION = PredictionSchema.from_names("object-detection", ["person", "car"])
CLASSIFICATION = PredictionSchema.from_names("classification", ["sunny", "clouded", "rainy"])
BOXES = {
    "a.png": [
        {"category_id": 0, "bbox": [140.0, 100.0, 80.0, 90.0], "score": 0.8},
        {"category_id": 1, "bbox": [0.0, 0.5, 10.0, 3.5], "score": 0.91},
    ],
    "sub/dir/b.jpg": [],
    "video-000042-mp4.png": [{"category_id": 1, "bbox": [1.0, 2.0, 3.0, 4.0], "score": 0.5}],
}
LABELS = {
    "a.png": [{"category_id": 0, "probabilities": [0.8, 0.1, 0.1]}],
    "sub/dir/b.jpg": [{"category_id": 2, "probabilities": [0.05, 0.05, 0.9]}],
}


def _write_both(location: Location) -> None:
    write_task(location, "boxes", DETECTION)
    write_predictions(location, "boxes", BOXES)
    write_task(location, "weather", CLASSIFICATION)
    write_predictions(location, "weather", LABELS)


def test_round_trip_in_lightly_layout(tmp_path: Path) -> None:
    location = location_from_uri(tmp_path.as_uri())
    _write_both(location)
    root = tmp_path / ".lightly" / "predictions"
    assert json.loads((root / "tasks.json").read_text()) == ["boxes", "weather"]
    assert json.loads((root / "boxes" / "schema.json").read_text()) == {
        "task_type": "object-detection",
        "categories": [{"id": 0, "name": "person"}, {"id": 1, "name": "car"}],
    }
    assert json.loads((root / "boxes" / "sub" / "dir" / "b.json").read_text()) == {
        "file_name": "sub/dir/b.jpg",
        "predictions": [],
    }
    assert (root / "boxes" / "video-000042-mp4.json").is_file()
    schema, loaded = load_predictions(location, "boxes")
    assert schema == DETECTION and loaded == BOXES
    schema, loaded = load_predictions(location, "weather")
    assert schema == CLASSIFICATION and loaded == LABELS
    # writing the same task again keeps tasks.json as it is
    write_task(location, "boxes", DETECTION)
    assert list_tasks(location) == ["boxes", "weather"]


def test_keys_that_normalise_round_trip(tmp_path: Path) -> None:
    """A key with '//' or './' (valid on S3) is stored under its normalised path and still reads back."""
    location = location_from_uri(tmp_path.as_uri())
    write_task(location, "boxes", DETECTION)
    odd = {"dir//img.png": BOXES["a.png"], "./top.png": []}
    write_predictions(location, "boxes", odd)
    _, loaded = load_predictions(location, "boxes")
    assert loaded == odd


def test_load_only_the_asked_keys(tmp_path: Path) -> None:
    location = location_from_uri(tmp_path.as_uri())
    _write_both(location)
    _, loaded = load_predictions(location, "boxes", keys=["a.png", "missing.png"])
    assert loaded == {"a.png": BOXES["a.png"]}


def test_round_trip_on_s3(s3: S3Emulator) -> None:
    from lightly_airflow.context import location_for

    bucket = s3.new_bucket("preds")
    location = location_for(f"s3://{bucket}/out", "aws_default")
    _write_both(location)
    keys = {o["Key"] for o in s3.client().list_objects_v2(Bucket=bucket)["Contents"]}
    assert "out/.lightly/predictions/boxes/sub/dir/b.json" in keys
    assert load_predictions(location, "boxes") == (DETECTION, BOXES)
    assert load_predictions(location, "weather", keys=["sub/dir/b.jpg"]) == (
        CLASSIFICATION,
        {"sub/dir/b.jpg": LABELS["sub/dir/b.jpg"]},
    )


def test_class_distribution_counts_every_category() -> None:
    assert class_distribution(DETECTION, BOXES.values()) == {"person": 1, "car": 2}
    assert class_distribution(CLASSIFICATION, [LABELS["a.png"]]) == {"sunny": 1, "clouded": 0, "rainy": 0}


@pytest.mark.parametrize(
    ("prediction", "message"),
    [
        ({"category_id": 5, "bbox": [0, 0, 1, 1], "score": 0.5}, "category_id must be one of"),
        ({"category_id": 0, "bbox": [0, 0, 1], "score": 0.5}, "bbox must be [x, y, width, height]"),
        ({"category_id": 0, "bbox": [0, 0, -1, 1], "score": 0.5}, "width and height must be >= 0"),
        ({"category_id": 0, "bbox": [0, 0, 1, 1], "score": 1.5}, "score must be a number in [0, 1]"),
        ({"category_id": 0, "bbox": [0, 0, 1, 1]}, "score must be a number"),
        ({"category_id": 0, "bbox": [0, 0, 1, 1], "score": 0.5, "probabilities": [0.9, 0.9]}, "must sum to 1"),
    ],
)
def test_a_bad_detection_file_is_named(tmp_path: Path, prediction: dict, message: str) -> None:
    location = location_from_uri(tmp_path.as_uri())
    write_task(location, "boxes", DETECTION)
    write_predictions(location, "boxes", {"good.png": BOXES["a.png"], "dir/bad.png": [prediction]})
    with pytest.raises(PredictionFormatError, match=r"boxes/dir/bad\.json: predictions\[0\]") as err:
        load_predictions(location, "boxes")
    assert message in str(err.value)


def test_classification_probabilities_must_cover_every_category(tmp_path: Path) -> None:
    location = location_from_uri(tmp_path.as_uri())
    write_task(location, "weather", CLASSIFICATION)
    write_predictions(location, "weather", {"x.png": [{"category_id": 0, "probabilities": [0.5, 0.5]}]})
    with pytest.raises(PredictionFormatError, match=r"weather/x\.json.*3 numbers in \[0, 1\]"):
        load_predictions(location, "weather")


def test_broken_files_and_layout_are_named(tmp_path: Path) -> None:
    location = location_from_uri(tmp_path.as_uri())
    root = tmp_path / ".lightly" / "predictions"
    with pytest.raises(PredictionFormatError, match=r"tasks\.json: not found"):
        load_predictions(location, "boxes")
    write_task(location, "boxes", DETECTION)
    with pytest.raises(PredictionFormatError, match=r"task 'other' is not listed \(listed: boxes\)"):
        load_predictions(location, "other")
    (root / "boxes" / "x.json").write_text("{not json")
    with pytest.raises(PredictionFormatError, match=r"boxes/x\.json: not valid JSON"):
        load_predictions(location, "boxes")
    (root / "boxes" / "x.json").write_text(json.dumps({"file_name": "y.png", "predictions": []}))
    with pytest.raises(PredictionFormatError, match=r"boxes/x\.json: file_name 'y\.png' does not match"):
        load_predictions(location, "boxes")
    (root / "boxes" / "schema.json").write_text(json.dumps({"task_type": "keypoints", "categories": []}))
    with pytest.raises(PredictionFormatError, match=r"boxes/schema\.json: task_type must be one of"):
        load_schema(location, "boxes")
    (root / "boxes" / "schema.json").write_text(
        json.dumps({"task_type": "classification", "categories": [{"id": 0, "name": "a"}, {"id": 0, "name": "b"}]})
    )
    with pytest.raises(PredictionFormatError, match=r"category ids must be unique; repeated: \[0\]"):
        load_schema(location, "boxes")
    (root / "boxes" / "schema.json").unlink()
    with pytest.raises(PredictionFormatError, match=r"boxes/schema\.json: not found"):
        load_schema(location, "boxes")


def test_invalid_task_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"task name '\.\./x'"):
        write_task(location_from_uri(tmp_path.as_uri()), "../x", DETECTION)
