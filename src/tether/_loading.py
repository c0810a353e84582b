"""Reading YAML/JSON files into mappings, and validation errors into one-line messages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .errors import ConfigError

Loc = tuple[str | int, ...]


def read_mapping(path: Path, what: str) -> tuple[dict[str, Any], dict[Loc, int]]:
    """Parse a YAML or JSON file that must hold a mapping.

    Returns the data and a map from field paths to 1-based line numbers, so that
    validation errors can point at the line. Syntax errors name the file and line.
    """
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{what} file '{path}' does not exist: check the path.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{what} file '{path}' cannot be read: {exc}") from exc
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"{path}:{exc.lineno}: invalid JSON: {exc.msg} (column {exc.colno})"
            ) from exc
        lines: dict[Loc, int] = {}
    else:
        try:
            data = yaml.safe_load(text)
            node = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(f"{where}: invalid YAML: {problem}") from exc
        lines = _line_map(node) if node is not None else {}
    if data is None:
        raise ConfigError(f"{what} file '{path}' is empty.")
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: a {what.lower()} file must hold a mapping of fields, "
            f"not a {type(data).__name__}."
        )
    return data, lines


def _line_map(node: yaml.Node, loc: Loc = ()) -> dict[Loc, int]:
    lines: dict[Loc, int] = {loc: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            child = (*loc, str(key.value))
            lines[child] = key.start_mark.line + 1
            for sub, line in _line_map(value, child).items():
                lines.setdefault(sub, line)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines.update(_line_map(item, (*loc, index)))
    return lines


def format_validation(
    exc: ValidationError, source: Path | None, lines: dict[Loc, int], prefix: Loc = ()
) -> str:
    """One line per problem: ``file:line: field.path: message``."""
    out = []
    for error in exc.errors():
        loc: Loc = (*prefix, *error["loc"])
        # pydantic adds union branch names ("str", "list[str]") to locs: drop them
        # for the line lookup, keep the field path readable.
        field = ".".join(str(part) for part in loc) or "(top level)"
        line = find_line(lines, loc)
        where = f"{source}:{line}" if source and line else (str(source) if source else "")
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown field (check its spelling; extra fields are not allowed)"
        out.append(f"{where}: {field}: {message}" if where else f"{field}: {message}")
    return "\n".join(out)


def find_line(lines: dict[Loc, int], loc: Loc) -> int | None:
    """The line of ``loc``, or of its nearest parent that has one."""
    while loc:
        if loc in lines:
            return lines[loc]
        loc = loc[:-1]
    return None
