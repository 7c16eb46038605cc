"""Embedding model: deterministic builds, normalised output, batch invariance and checkpoint loading."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from lightly_tasks.decoding import thumbnail
from lightly_tasks.demo_data import source_image
from lightly_tasks.embedding import CheckpointError, build_model, embed, prefetch

torch.set_num_threads(2)
SIZE = 32
DEVICE = torch.device("cpu")


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    names = ["astronaut", "chelsea", "coffee", "rocket", "brick"]
    return np.stack([thumbnail(source_image(n), SIZE) for n in names])


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return build_model("resnet18")


def _embed(model: nn.Module, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    return embed(model, [images], total=len(images), batch_size=batch_size, device=DEVICE)


def _checkpoint(state: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def trained() -> nn.Module:
    """A seeded resnet18 with a 10-class head, standing in for a fine-tuned model."""
    torch.manual_seed(1234)
    return torchvision.models.resnet18(num_classes=10).eval()


def test_output_is_l2_normalised_float32(model, images) -> None:
    vectors = _embed(model, images)
    assert vectors.shape == (len(images), 512)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.isfinite(vectors).all()


def test_distinct_images_give_distinct_vectors(model, images) -> None:
    vectors = _embed(model, images)
    gaps = [np.abs(vectors[i] - vectors[j]).max() for i in range(len(images)) for j in range(i)]
    assert min(gaps) > 1e-4


def test_build_model_is_deterministic(model, images) -> None:
    again = build_model("resnet18")
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    np.testing.assert_array_equal(_embed(model, images), _embed(again, images))


def test_build_model_does_not_touch_the_global_rng() -> None:
    torch.manual_seed(7)
    expected = torch.rand(4)
    torch.manual_seed(7)
    build_model("resnet18")
    assert torch.equal(torch.rand(4), expected)


def test_identical_images_get_identical_vectors(model, images) -> None:
    batch = np.concatenate([images[:3], images[:1], images[1:2]])
    vectors = _embed(model, batch)
    np.testing.assert_array_equal(vectors[3], vectors[0])
    np.testing.assert_array_equal(vectors[4], vectors[1])


def test_batch_size_and_part_sizes_do_not_change_results(model, images) -> None:
    reference = _embed(model, images, batch_size=32)
    for batch_size in (1, 3):
        np.testing.assert_allclose(
            _embed(model, images, batch_size), reference, atol=1e-5, err_msg=str(batch_size)
        )
    parts = [images[:2], images[2:3], images[3:]]
    rebatched = embed(model, parts, total=len(images), batch_size=4, device=DEVICE)
    np.testing.assert_allclose(rebatched, reference, atol=1e-5)


def test_no_images_give_an_empty_result(model) -> None:
    vectors = embed(model, [], total=0, device=DEVICE)
    assert vectors.shape[0] == 0 and vectors.dtype == np.float32


def test_wrong_total_is_an_error(model, images) -> None:
    with pytest.raises(RuntimeError, match="expected 8"):
        embed(model, [images], total=8, device=DEVICE)
    with pytest.raises(RuntimeError, match="embedded 0 images, expected 5"):
        embed(model, [], total=5, device=DEVICE)


def test_prefetch_stops_its_producer_when_the_consumer_stops() -> None:
    produced: list[int] = []

    def endless():
        for i in range(10_000):
            produced.append(i)
            yield np.zeros((1,), np.uint8)

    stream = prefetch(endless(), depth=2)
    next(stream)
    stream.close()  # e.g. the model raised on the first batch
    time.sleep(0.5)
    count = len(produced)
    time.sleep(0.3)
    assert len(produced) == count < 10, "the producer stopped, holding at most the queue's depth"


def test_a_failing_cache_reader_propagates(model, images) -> None:
    def parts():
        yield images[:2]
        raise OSError("cache part vanished")

    with pytest.raises(OSError, match="cache part vanished"):
        embed(model, parts(), total=len(images), batch_size=2, device=DEVICE)


def test_checkpoint_with_head_loads_the_backbone(trained, images) -> None:
    loaded = build_model("resnet18", _checkpoint(trained.state_dict()))
    reference = torchvision.models.resnet18(num_classes=10)
    reference.load_state_dict(trained.state_dict())
    reference.fc = nn.Identity()
    expected = _embed(reference.eval(), images)
    np.testing.assert_allclose(_embed(loaded, images), expected, atol=1e-6)
    assert np.abs(_embed(build_model("resnet18"), images) - expected).max() > 1e-3


@pytest.mark.parametrize("wrap", ["module.", "backbone.", "module.backbone.", "state_dict", "no_head"])
def test_checkpoint_key_prefixes_and_wrappers(trained, wrap: str) -> None:
    state = trained.state_dict()
    if wrap == "state_dict":
        payload: dict = {"state_dict": state, "epoch": 3}
    elif wrap == "no_head":
        payload = {k: v for k, v in state.items() if not k.startswith("fc.")}
    else:
        payload = {f"{wrap}{k}": v for k, v in state.items()}
    loaded = build_model("resnet18", _checkpoint(payload)).state_dict()
    assert set(loaded) == {k for k in state if not k.startswith("fc.")}
    for key, value in loaded.items():
        assert torch.equal(value, state[key]), key


def test_checkpoint_of_another_architecture_is_refused() -> None:
    torch.manual_seed(0)
    other = torchvision.models.resnet34(num_classes=10)
    with pytest.raises(CheckpointError, match=r"does not fit resnet18: 0 missing keys .* unexpected keys"):
        build_model("resnet18", _checkpoint(other.state_dict()))


def test_checkpoint_with_other_shapes_is_refused(trained) -> None:
    state = dict(trained.state_dict())
    state["conv1.weight"] = torch.zeros(64, 1, 7, 7)  # a greyscale-input variant of resnet18
    with pytest.raises(CheckpointError, match=r"conv1\.weight \(64, 1, 7, 7\) != \(64, 3, 7, 7\)"):
        build_model("resnet18", _checkpoint(state))


@pytest.mark.parametrize("data", [b"not a checkpoint", b""])
def test_unreadable_checkpoint_is_refused(data: bytes) -> None:
    with pytest.raises(CheckpointError, match="not a loadable torch state_dict"):
        build_model("resnet18", data)


def test_checkpoint_that_is_not_a_dict_is_refused() -> None:
    with pytest.raises(CheckpointError, match="not a state_dict"):
        build_model("resnet18", _checkpoint([torch.zeros(3)]))


def test_convnext_keeps_the_layer_norm_of_its_pooled_features() -> None:
    """ConvNeXt's classifier is LayerNorm2d, Flatten, Linear: only the Linear is a head."""
    full = torchvision.models.convnext_tiny(weights=None).eval()
    with torch.no_grad():
        full.classifier[0].weight.fill_(2.0)
        full.classifier[0].bias.fill_(0.5)
    buffer = io.BytesIO()
    torch.save(full.state_dict(), buffer)
    model = build_model("convnext_tiny", buffer.getvalue())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = full.classifier[1](full.classifier[0](full.avgpool(full.features(x))))
        got = model(x)
    assert got.shape == (2, 768)
    torch.testing.assert_close(got, expected)
