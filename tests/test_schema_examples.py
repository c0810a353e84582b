"""Every loaded backend config documents each field with a description and examples.

Written generically over ``list_backends()``, so an installed plugin (such as the
one under ``examples/custom_backend``) is held to the same rules as the built-ins.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

import tether
from tether import BackendConfig

SECRET = "topsecret"

CONFIGS: dict[str, type[BackendConfig]] = {
    info.name: info.config_class for info in tether.list_backends() if info.config_class is not None
}


@pytest.fixture(autouse=True)
def example_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run in a folder shaped like the examples assume (docker's docker/Dockerfile)."""
    (tmp_path / "docker").mkdir()
    (tmp_path / "docker" / "Dockerfile").write_text("FROM scratch\n")
    monkeypatch.chdir(tmp_path)


@pytest.fixture(params=sorted(CONFIGS))
def config_cls(request: pytest.FixtureRequest) -> type[BackendConfig]:
    return CONFIGS[str(request.param)]


def _schema(cls: type[BackendConfig]) -> dict[str, Any]:
    return cls.model_json_schema()


def _class_examples(cls: type[BackendConfig]) -> list[dict[str, Any]]:
    examples = _schema(cls).get("examples")
    assert isinstance(examples, list) and examples, f"{cls.__name__} has no class-level examples"
    return examples


def test_builtins_are_covered() -> None:
    assert {"local", "dummy", "docker"} <= set(CONFIGS)


def test_every_field_has_a_description_and_examples(config_cls: type[BackendConfig]) -> None:
    properties = _schema(config_cls)["properties"]
    assert properties
    undescribed = [
        name
        for name, field in properties.items()
        if not (isinstance(field.get("description"), str) and field["description"].strip())
    ]
    without_examples = [
        name
        for name, field in properties.items()
        if not (isinstance(field.get("examples"), list) and field["examples"])
    ]
    assert not undescribed, f"{config_cls.__name__}: fields without description: {undescribed}"
    assert not without_examples, (
        f"{config_cls.__name__}: fields without examples: {without_examples}"
    )


def test_class_examples_validate(config_cls: type[BackendConfig]) -> None:
    for example in _class_examples(config_cls):
        try:
            config = config_cls.model_validate(example)
        except ValidationError as exc:
            pytest.fail(f"{config_cls.__name__} example {example} is invalid:\n{exc}")
        assert isinstance(config, config_cls)


def test_field_examples_validate_in_some_class_example(
    config_cls: type[BackendConfig],
) -> None:
    """Each field example fits one of the class examples (fields may exclude each other,
    like docker's image and dockerfile)."""
    examples = _class_examples(config_cls)
    failures = []
    for name, field in _schema(config_cls)["properties"].items():
        for example in field.get("examples", []):
            errors = []
            for base in examples:
                try:
                    config_cls.model_validate({**base, name: example})
                    break
                except ValidationError as exc:
                    errors.append(exc.errors()[0]["msg"])
            else:
                failures.append(f"{name}={example!r}: {errors[0]}")
    assert not failures, f"{config_cls.__name__}: invalid field examples: {failures}"


def test_schema_and_record_hold_no_secret_values(config_cls: type[BackendConfig]) -> None:
    first = _class_examples(config_cls)[0]
    secret_env = {"env_vars": {"K": SecretStr(SECRET)}}
    if "backend" in first:  # a wrapper (cached): the inner backend holds the environment
        config = config_cls.model_validate({**first, "backend": {**first["backend"], **secret_env}})
        inner = config.backend  # type: ignore[attr-defined]
        assert inner.resolved_env()["K"] == SECRET
        record = config.to_record()["backend"]
    else:
        config = config_cls.model_validate({**first, **secret_env})
        assert config.resolved_env()["K"] == SECRET  # the value is there, just never shown
        record = config.to_record()
    assert record["secret_env_vars"] == ["K"]
    for shown in (
        json.dumps(config_cls.model_json_schema()),
        json.dumps(record),
        repr(config),
    ):
        assert SECRET not in shown


def test_every_schema_accepts_every_example_it_carries(config_cls: type[BackendConfig]) -> None:
    """What `tether backends schema` prints validates the examples it prints (a schema
    checker such as jsonschema is what users point at their config files)."""
    import jsonschema

    schema = _schema(config_cls)
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    examples = schema.get("examples", [])
    assert examples, f"{config_cls.__name__} carries no examples"
    for example in examples:
        errors = [e.message for e in validator.iter_errors(example)]
        assert not errors, f"{config_cls.__name__} example {example}: {errors}"
