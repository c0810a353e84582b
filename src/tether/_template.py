"""Commented YAML templates of backend configs (``tether backends create``).

A template validates as written: it holds the backend's defaults, plus what its
first schema example needs to be valid (or, with examples, that whole example).
Optional fields without a value are left in as comments to uncomment.
"""

from __future__ import annotations

import textwrap
from typing import Any

import yaml
from pydantic import ValidationError

from ._loading import format_validation
from .config import BackendConfig
from .errors import ConfigError


def _class_examples(cls: type[BackendConfig]) -> list[dict[str, Any]]:
    extra = cls.model_config.get("json_schema_extra")
    examples = extra.get("examples") if isinstance(extra, dict) else None
    if not isinstance(examples, list):
        return []
    return [dict(e) for e in examples if isinstance(e, dict)]


def _valid(cls: type[BackendConfig], data: dict[str, Any]) -> bool:
    try:
        cls.model_validate(data)
    except ValidationError:
        return False
    return True


def template_data(cls: type[BackendConfig], name: str, *, with_examples: bool) -> dict[str, Any]:
    """The values a template sets: ``type``, and example values where needed or asked."""
    data: dict[str, Any] = {"type": name}
    examples = _class_examples(cls)
    example = examples[0] if examples else {}
    if with_examples:
        data.update(example)
    else:
        # The smallest prefix of the example that makes a valid config.
        for key, value in example.items():
            if _valid(cls, data):
                break
            data[key] = value
    data["type"] = name
    return data


class _Dumper(yaml.SafeDumper):
    """Block style, with multi-line strings as ``|`` literals (readable in a template)."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value.strip("\n") or (value.endswith("\n") and value.strip()) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump_yaml(data: Any) -> str:
    """Block-style YAML in the given key order, multi-line strings as literals."""
    return yaml.dump(
        data,
        Dumper=_Dumper,
        default_flow_style=False,
        sort_keys=False,
        allow_unicode=True,
        width=88,
    )


def _yaml_value(key: str, value: Any) -> str:
    text = yaml.dump(
        {key: value},
        Dumper=_Dumper,
        default_flow_style=False,
        sort_keys=False,
        allow_unicode=True,
        width=88,
    )
    return text.rstrip("\n")


def config_template(cls: type[BackendConfig], name: str, *, with_examples: bool = False) -> str:
    """A commented YAML config for backend ``name`` that validates as written.

    Raises:
        ConfigError: when the backend's own examples do not make a valid config
            (a plugin bug; the message says which fields fail).
    """
    data = template_data(cls, name, with_examples=with_examples)
    try:
        config = cls.model_validate(data)
    except ValidationError as exc:
        detail = format_validation(exc, None, {}).replace("\n", "; ")
        raise ConfigError(
            f"Backend {name!r} has no valid template: its schema examples fail: {detail}"
        ) from None
    values = config.model_dump(mode="json")
    summary = (cls.__doc__ or "").strip().splitlines()[0].replace("``", "") if cls.__doc__ else ""
    lines = [f"# tether backend config: {name}"]
    if summary:
        lines.append(f"# {summary}")
    lines += [
        f"# Check it with: tether backends validate FILE --backend-type {name}",
        "# ${VAR} and ${VAR:-default} are read from the environment when the file is loaded.",
        "",
        _yaml_value("type", name),
    ]
    for field, info in cls.model_fields.items():
        if field == "type":
            continue
        lines.append("")
        for part in textwrap.wrap(info.description or field, width=86):
            lines.append(f"# {part}")
        value = values.get(field)
        if field in data or value is not None:
            lines.append(_yaml_value(field, value))
        else:
            hint = info.examples[0] if info.examples else None
            lines.append("# " + _yaml_value(field, hint).replace("\n", "\n# "))
    return "\n".join(lines) + "\n"
