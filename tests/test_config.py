"""Run configuration: defaults, errors that name the key, redaction, and the Params schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from lightly_tasks.config import (
    EMBEDDING_MODELS,
    ConfigError,
    RunConfig,
    param_schemas,
    parse_config,
    redact_uri,
)


def _conf(**overrides: Any) -> dict[str, Any]:
    return {"datasource": {"uri": "file:///data/images"}, "dataset": "cats", **overrides}


@pytest.fixture
def lightly_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("LIGHTLY_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("LIGHTLY_ARTIFACTS_ROOT", raising=False)
    monkeypatch.delenv("LIGHTLY_STORE_URL", raising=False)
    return tmp_path / "home"


def test_minimal_conf_gets_defaults(lightly_env: Path) -> None:
    cfg = parse_config(_conf())
    assert isinstance(cfg, RunConfig)
    assert cfg.datasource.uri == "file:///data/images"
    assert cfg.datasource.process_all is False
    assert cfg.dataset == "cats"
    assert cfg.input_type == "images"
    assert cfg.stopping_condition.n_samples == 100
    assert cfg.embedding.model == "resnet18" and cfg.embedding.image_size == 224
    assert cfg.artifacts_root == (lightly_env / "artifacts").resolve().as_uri()
    assert cfg.store_url == f"sqlite:///{(lightly_env / 'store.db').resolve()}"


def test_env_vars_override_lightly_home(lightly_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIGHTLY_ARTIFACTS_ROOT", "file:///srv/artifacts/")
    monkeypatch.setenv("LIGHTLY_STORE_URL", "postgresql://lightly@db/lightly")
    cfg = parse_config(_conf())
    assert cfg.artifacts_root == "file:///srv/artifacts"
    assert cfg.store_url == "postgresql://lightly@db/lightly"


def test_explicit_values_beat_env(lightly_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIGHTLY_ARTIFACTS_ROOT", "file:///srv/artifacts")
    cfg = parse_config(_conf(artifacts_root="file:///tmp/mine/", store_url="sqlite:///x.db"))
    assert cfg.artifacts_root == "file:///tmp/mine"
    assert cfg.store_url == "sqlite:///x.db"


def test_integral_float_is_accepted_as_int() -> None:
    assert parse_config(_conf(batch_size=16.0)).batch_size == 16


@pytest.mark.parametrize(
    ("conf", "key"),
    [
        (_conf(n_samples=10), "n_samples"),
        (_conf(datasource={"uri": "file:///x", "bucket": "b"}), "datasource.bucket"),
        (_conf(stopping_condition={"n_sample": 3}), "stopping_condition.n_sample"),
        (_conf(embedding={"size": 64}), "embedding.size"),
    ],
)
def test_unknown_keys_are_named(conf: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{key}: unknown key"):
        parse_config(conf)


@pytest.mark.parametrize(
    ("conf", "key"),
    [
        (_conf(batch_size="32"), "batch_size"),
        (_conf(batch_size=True), "batch_size"),
        (_conf(batch_size=2.5), "batch_size"),
        (_conf(keep_cache=1), "keep_cache"),
        (_conf(remove_exact_duplicates="false"), "remove_exact_duplicates"),
        (_conf(datasource={"uri": "file:///x", "process_all": 0}), "datasource.process_all"),
        (_conf(stopping_condition={"n_samples": "5"}), "stopping_condition.n_samples"),
        (_conf(stopping_condition={"proportion_samples": True}), "stopping_condition.proportion_samples"),
        (_conf(stopping_condition={"min_distance": "0.1"}), "stopping_condition.min_distance"),
        (_conf(embedding={"image_size": False}), "embedding.image_size"),
        (_conf(dataset=7), "dataset"),
        (_conf(datasource="file:///x"), "datasource"),
        (_conf(datasource={"uri": 3}), "datasource.uri"),
    ],
)
def test_wrong_types_are_named(conf: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{key}: expected"):
        parse_config(conf)


@pytest.mark.parametrize(
    ("conf", "key"),
    [
        (_conf(stopping_condition={"n_samples": 0}), "stopping_condition.n_samples"),
        (_conf(stopping_condition={"proportion_samples": 0}), "stopping_condition.proportion_samples"),
        (_conf(stopping_condition={"proportion_samples": 1.5}), "stopping_condition.proportion_samples"),
        (_conf(stopping_condition={"min_distance": -0.1}), "stopping_condition.min_distance"),
        (_conf(dataset="my dataset"), "dataset"),
        (_conf(dataset="../escape"), "dataset"),
        (_conf(dataset=""), "dataset"),
        (_conf(datasource={}), "datasource.uri"),
        ({"dataset": "cats"}, "datasource.uri"),
        (_conf(datasource={"uri": "ftp://host/images"}), "datasource.uri"),
        (_conf(datasource={"uri": "/data/images"}), "datasource.uri"),
        (_conf(embedding={"model": "vit_h_14"}), "embedding.model"),
        (_conf(embedding={"image_size": 16}), "embedding.image_size"),
        (_conf(embedding={"checkpoint": "ftp://host/model.pt"}), "embedding.checkpoint"),
        (_conf(dump={"output": "ftp://host/out"}), "dump.output"),
        (_conf(batch_size=0), "batch_size"),
        (_conf(num_shards=-1), "num_shards"),
        (_conf(input_type="audio"), "input_type"),
        (_conf(selected_sequence_length=2), "selected_sequence_length"),
        (_conf(input_type="videos", selected_sequence_length=3), "stopping_condition.n_samples"),
        (_conf(input_type="videos", video={"frame_stride": 0}), "video.frame_stride"),
        (_conf(input_type="videos", video={"timeout_seconds": 0}), "video.timeout_seconds"),
        (_conf(input_type="videos", video={"backend": "opencv"}), "video.backend"),
        (_conf(dump={"format": "gif"}), "dump.format"),
        (_conf(enable_training=True, training={"image_size": 512}), "training.image_size"),
        (_conf(training={"method": "mae"}), "training.method"),
        (_conf(training={"batch_size": 1}), "training.batch_size"),
        (_conf(stopping_condition={}), "stopping_condition"),
        (_conf(stopping_condition={"n_samples": None}), "stopping_condition"),
    ],
)
def test_impossible_values_are_named(conf: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{key}: "):
        parse_config(conf)


def test_error_messages_explain_the_fix() -> None:
    with pytest.raises(ConfigError, match="scheme 'ftp' is not supported"):
        parse_config(_conf(datasource={"uri": "ftp://host/images"}))
    with pytest.raises(ConfigError, match="n_samples, proportion_samples, min_distance"):
        parse_config(_conf(stopping_condition={}))
    with pytest.raises(ConfigError, match="known keys of stopping_condition: min_distance, n_samples"):
        parse_config(_conf(stopping_condition={"n_sample": 3}))


def test_any_single_stopping_condition_is_enough() -> None:
    assert (
        parse_config(_conf(stopping_condition={"proportion_samples": 1})).stopping_condition.n_samples is None
    )
    assert parse_config(_conf(stopping_condition={"min_distance": 0})).stopping_condition.min_distance == 0.0


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("postgresql://u:secret@h/db", "postgresql://u:***@h/db"),
        (
            "postgresql+psycopg://lightly:secret@db:5432/store",
            "postgresql+psycopg://lightly:***@db:5432/store",
        ),
        ("https://token123@host/path", "https://***@host/path"),
        ("file:///data/images", "file:///data/images"),
        ("sqlite:////tmp/store.db", "sqlite:////tmp/store.db"),
    ],
)
def test_redact_uri(uri: str, expected: str) -> None:
    assert redact_uri(uri) == expected


@pytest.mark.parametrize(
    ("url", "password"),
    [
        ("postgresql://u:se/cret@h/db", "se/cret"),
        ("postgresql://u:se#cret@h/db", "se#cret"),
        ("postgresql://h/db?password=secret", "secret"),
    ],
)
def test_redact_uri_hides_unusual_passwords(url: str, password: str) -> None:
    assert password not in redact_uri(url)


def test_redacted_config_has_no_password_anywhere() -> None:
    cfg = parse_config(_conf(store_url="postgresql://u:secret@h/db"))
    assert cfg.store_url == "postgresql://u:secret@h/db"
    dumped = json.dumps(cfg.redacted())
    assert "secret" not in dumped
    assert "postgresql://u:***@h/db" in dumped
    assert cfg.redacted()["datasource"]["uri"] == "file:///data/images"


def _walk(schema: dict[str, Any], name: str):
    yield name, schema
    for child, sub in schema.get("properties", {}).items():
        yield from _walk(sub, f"{name}.{child}")


def test_param_schemas_document_every_key() -> None:
    schemas = param_schemas()
    assert set(schemas) == {f for f in RunConfig.__dataclass_fields__}
    for top, schema in schemas.items():
        for name, sub in _walk(schema, top):
            assert sub.get("title"), name
            assert sub.get("description"), name
            assert "default" in sub, name
            if sub.get("type") == "object":
                assert sub["additionalProperties"] is False, name
    assert schemas["embedding"]["properties"]["model"]["enum"] == list(EMBEDDING_MODELS)
    assert schemas["stopping_condition"]["properties"]["n_samples"]["minimum"] == 1


def test_param_schema_defaults_validate_against_their_schema() -> None:
    for top, schema in param_schemas().items():
        for _name, sub in _walk(schema, top):
            jsonschema.validate(sub["default"], sub)


def test_param_schemas_reject_what_parse_config_rejects() -> None:
    schemas = param_schemas()
    bad = {
        "stopping_condition": {"n_samples": 0},
        "embedding": {"model": "nope"},
        "batch_size": "32",
        "keep_cache": 1,
        "datasource": {"uri": "file:///x", "bucket": "b"},
    }
    for key, value in bad.items():
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(value, schemas[key])


def test_param_defaults_form_a_valid_conf(lightly_env: Path) -> None:
    conf = {name: schema["default"] for name, schema in param_schemas().items()}
    conf["datasource"] = {**conf["datasource"], "uri": "file:///data/images"}
    conf["dataset"] = "cats"
    cfg = parse_config(conf)
    assert cfg == parse_config(_conf())
