"""Pretagging models on real decoded thumbnails: TorchScript detection and classification, a torchvision detector
with random weights saved to a file, the category sources, and the clear errors (no weights, wrong weights)."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch import Tensor, nn

from lightly_tasks.config import ConfigError, PretaggingConfig
from lightly_tasks.decoding import decode_object
from lightly_tasks.predictions import PredictionSchema, validate_predictions
from lightly_tasks.pretagging import (
    PretaggingModelError,
    load_pretagging_model,
    load_torchscript,
    load_torchvision,
    pretag,
)
from tests.tiny_models import (
    CLASSIFIER_CATEGORIES,
    DETECTOR_CATEGORIES,
    ColourClassifier,
    RedBoxDetector,
    detector_schema,
    red_box_image,
    torchscript_bytes,
)

CPU = torch.device("cpu")


class BoxesOnly(nn.Module):
    """Breaks the detection contract: boxes without scores and labels."""

    def forward(self, images: list[Tensor]) -> list[Tensor]:
        return [torch.zeros(1, 4) for _ in images]


# (width, height) of the originals and the red box in their pixels: wide, tall and square images
IMAGES = [((240, 120), (40, 30, 120, 90)), ((90, 180), (10, 100, 60, 170)), ((128, 128), (64, 0, 128, 32))]


def _thumbnails(tmp_path: Path, image_size: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
    thumbs, sizes = [], []
    for i, (size, box) in enumerate(IMAGES):
        path = tmp_path / f"{i}.png"
        red_box_image(path, size, box, seed=i)
        decoded = decode_object(path.read_bytes(), image_size=image_size)
        assert decoded.verdict == "ok"
        thumbs.append(decoded.thumbnail)
        sizes.append((decoded.metadata["width"], decoded.metadata["height"]))
    return np.stack(thumbs), sizes


def test_torchscript_detector_boxes_come_back_in_original_pixels(tmp_path: Path) -> None:
    thumbs, sizes = _thumbnails(tmp_path, image_size=64)
    model = load_torchscript(torchscript_bytes(RedBoxDetector(), detector_schema()), task_type="object-detection")
    assert [c.name for c in model.schema.categories] == DETECTOR_CATEGORIES
    result = pretag(model, [thumbs[:2], thumbs[2:]], sizes, batch_size=2, score_threshold=0.5, device=CPU)
    assert len(result.predictions) == len(IMAGES)
    for preds, ((width, height), (x1, y1, x2, y2)) in zip(result.predictions, IMAGES, strict=True):
        validate_predictions(preds, model.schema, where="test")
        assert len(preds) == 1, preds  # the 0.1-score noise box is below the threshold
        (pred,) = preds
        assert pred["category_id"] == 1 and pred["score"] == pytest.approx(0.9)
        # the model's input has a short side of 64 px: one input pixel is min(width, height) / 64 original ones
        tolerance = 2.5 * min(width, height) / 64
        assert pred["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1], abs=tolerance)
    low = pretag(model, [thumbs], sizes, score_threshold=0.05, device=CPU)
    assert all(len(p) == 2 and p[1]["category_id"] == 2 for p in low.predictions)


def test_torchscript_classifier_gives_probabilities_per_category(tmp_path: Path) -> None:
    colours = np.zeros((3, 32, 32, 3), np.uint8)
    for i in range(3):
        colours[i, ..., i] = 220  # red, green, blue squares
    model = load_torchscript(
        torchscript_bytes(ColourClassifier()), task_type="classification", categories=CLASSIFIER_CATEGORIES
    )
    result = pretag(model, [colours], [(32, 32)] * 3, device=CPU)
    for i, (pred,) in enumerate(result.predictions):
        validate_predictions([pred], model.schema, where="test")
        assert pred["category_id"] == i
        assert int(np.argmax(pred["probabilities"])) == i and sum(pred["probabilities"]) == pytest.approx(1, abs=1e-4)


def test_torchvision_detector_from_a_weights_file(tmp_path: Path) -> None:
    """fasterrcnn_mobilenet_v3_large_320_fpn with random weights, 3 classes, saved with its category names."""
    torch.manual_seed(0)
    arch = "fasterrcnn_mobilenet_v3_large_320_fpn"
    net = torchvision.models.get_model(arch, weights=None, weights_backbone=None, num_classes=3)
    buffer = io.BytesIO()
    torch.save({"state_dict": net.state_dict(), "categories": DETECTOR_CATEGORIES}, buffer)
    weights = tmp_path / "detector.pt"
    weights.write_bytes(buffer.getvalue())
    config = PretaggingConfig(model=arch, weights=weights.as_uri(), score_threshold=0.0)
    model = load_pretagging_model(config, lambda uri: Path(uri.removeprefix("file://")).read_bytes())
    assert model.source == f"torchvision:{arch}"
    assert model.schema == PredictionSchema.from_names("object-detection", DETECTOR_CATEGORIES)
    thumbs, sizes = _thumbnails(tmp_path, image_size=32)
    result = pretag(model, [thumbs[:2]], sizes[:2], batch_size=2, score_threshold=0.0, device=CPU)
    assert sum(len(p) for p in result.predictions) > 0  # random weights still propose boxes at threshold 0
    for preds, (width, height) in zip(result.predictions, sizes[:2], strict=True):
        validate_predictions(preds, model.schema, where="test")
        for p in preds:
            x, y, w, h = p["bbox"]
            assert 0 <= x <= x + w <= width + 0.05 and 0 <= y <= y + h <= height + 0.05


def test_torchvision_category_names_come_from_the_installed_package() -> None:
    """A 1000-class classifier's state_dict without names gets ImageNet's, from torchvision's bundled meta."""
    net = torchvision.models.get_model("mobilenet_v3_small", weights=None)
    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    model = load_torchvision("mobilenet_v3_small", buffer.getvalue(), task_type="classification")
    assert len(model.schema.categories) == 1000 and model.schema.names[0] == "tench"


def test_without_weights_there_is_a_clear_error_and_no_download(monkeypatch) -> None:
    def no_network(*args, **kwargs):
        raise AssertionError("tried to download")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    config = PretaggingConfig(model="fasterrcnn_mobilenet_v3_large_320_fpn")
    with pytest.raises(ConfigError, match=r"pretagging_config\.weights: .* no weights are downloaded"):
        load_pretagging_model(config, no_network)


def test_unusable_models_and_weights_are_named() -> None:
    with pytest.raises(ConfigError, match="neither a URI nor a torchvision"):
        load_torchvision("not_a_model", b"", task_type="object-detection")
    with pytest.raises(ConfigError, match="is a detection architecture"):
        load_torchvision("fasterrcnn_mobilenet_v3_large_320_fpn", b"", task_type="classification")
    with pytest.raises(PretaggingModelError, match="not a loadable torch state_dict"):
        load_torchvision("resnet18", b"garbage", task_type="classification")
    buffer = io.BytesIO()
    torch.save({"fc.weight": torch.zeros(3, 7)}, buffer)
    with pytest.raises(PretaggingModelError, match="do not fit resnet18"):
        load_torchvision("resnet18", buffer.getvalue(), task_type="classification")
    with pytest.raises(PretaggingModelError, match="not a loadable TorchScript file"):
        load_torchscript(b"garbage", task_type="object-detection")
    with pytest.raises(ConfigError, match="a TorchScript model needs its category names"):
        load_torchscript(torchscript_bytes(RedBoxDetector()), task_type="object-detection")
    with pytest.raises(PretaggingModelError, match=r"schema\.json says task_type 'object-detection'"):
        load_torchscript(torchscript_bytes(RedBoxDetector(), detector_schema()), task_type="classification")


def test_a_model_breaking_the_output_contract_is_reported(tmp_path: Path) -> None:
    thumbs, sizes = _thumbnails(tmp_path, image_size=32)
    wrong_labels = load_torchscript(
        torchscript_bytes(RedBoxDetector()), task_type="object-detection", categories=["background", "red"]
    )
    with pytest.raises(PretaggingModelError, match="predicted label 2, which is not a category id"):
        pretag(wrong_labels, [thumbs], sizes, score_threshold=0.0, device=CPU)
    classifier_as_detector = load_torchscript(
        torchscript_bytes(ColourClassifier()), task_type="object-detection", categories=CLASSIFIER_CATEGORIES
    )
    with pytest.raises(PretaggingModelError, match="object-detection model failed on a batch of 3 images"):
        pretag(classifier_as_detector, [thumbs], sizes, device=CPU)
    boxes_only = load_torchscript(torchscript_bytes(BoxesOnly()), task_type="object-detection", categories=["a"])
    with pytest.raises(PretaggingModelError, match=re.escape("one {'boxes', 'scores', 'labels'} dict per input")):
        pretag(boxes_only, [thumbs], sizes, device=CPU)
    too_few = load_torchscript(torchscript_bytes(ColourClassifier()), task_type="classification", categories=["r"])
    with pytest.raises(PretaggingModelError, match=r"output must be \(3, 1\) logits"):
        pretag(too_few, [thumbs], sizes, device=CPU)


@pytest.mark.parametrize(
    ("pretagging_config", "message"),
    [
        ({}, r"pretagging_config\.model: pretagging is on but no model is set"),
        ({"model": "fasterrcnn_mobilenet_v3_large_320_fpn"}, r"pretagging_config\.weights: .* no built-in"),
        ({"model": "file:///m.pt", "weights": "file:///w.pt"}, r"TorchScript model carries its weights"),
        ({"model": "Faster RCNN"}, r"pretagging_config\.model: must be a torchvision architecture name"),
        ({"model": "file:///m.pt", "task_name": "../up"}, r"pretagging_config\.task_name: must be"),
        ({"model": "file:///m.pt", "score_threshold": 2}, r"pretagging_config\.score_threshold: must be <= 1"),
        ("min_requirements.json", r"min-requirements file is not supported"),
    ],
)
def test_config_refuses_an_unusable_pretagging_setup(pretagging_config, message: str) -> None:
    from lightly_tasks.config import parse_config

    conf = {"datasource": {"uri": "file:///data"}, "dataset": "d", "pretagging": True}
    with pytest.raises(ConfigError, match=message):
        parse_config({**conf, "pretagging_config": pretagging_config})


def test_config_accepts_a_lightly_style_pretagging_setup() -> None:
    from lightly_tasks.config import parse_config

    base = {"datasource": {"uri": "file:///data"}, "dataset": "d"}
    assert parse_config(base).pretagging is False  # off by default, and then nothing is required
    cfg = parse_config(
        {
            **base,
            "pretagging": True,
            "pretagging_config": {
                "model": "retinanet_resnet50_fpn",
                "weights": "s3://models/retinanet.pt",
                "categories": ["background", "car"],
                "task_name": "cars",
            },
        }
    )
    assert cfg.pretagging_config.categories == ("background", "car") and cfg.pretagging_config.task_name == "cars"
