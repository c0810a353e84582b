"""Reading YAML/JSON files into mappings, and validation errors into one-line messages."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from ._files import oversize, read_capped
from .errors import ConfigError

if TYPE_CHECKING:
    import yaml

Loc = tuple[str | int, ...]

#: Most values a document may expand to through YAML aliases ("billion laughs").
MAX_VALUES = 100_000
#: Longest user text quoted back in an error message.
MAX_QUOTE = 80

#: Longest field path shown in an error message.
MAX_PATH = 80

_IDENTIFIER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def quote(value: object, limit: int = MAX_QUOTE) -> str:
    """``repr(value)``, shortened to ``limit`` characters, on one line whatever it holds."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def field_path(loc: Loc) -> str:
    """``a.b.0.c``; keys that are not plain names are quoted, so a path is one line."""
    parts = [str(p) if isinstance(p, int) or _IDENTIFIER.match(p) else quote(p) for p in loc]
    text = ".".join(parts) or "(top level)"
    # Deep paths of odd keys are cut in the middle: the message must stay one short line.
    return text if len(text) <= MAX_PATH else text[:38] + "..." + text[-(MAX_PATH - 41) :]


def read_mapping(path: Path, what: str) -> tuple[dict[str, Any], dict[Loc, int]]:
    """Parse a YAML or JSON file that must hold a mapping.

    Returns the data and a map from field paths to 1-based line numbers, so that
    validation errors can point at the line. Syntax errors name the file and line;
    recursive or explosive YAML aliases are refused, and so are files over
    :data:`tether._files.MAX_FILE_SIZE`, before they are read.
    """
    too_big = oversize(path, what)
    if too_big:
        raise ConfigError(too_big)
    try:
        data_bytes = read_capped(path, what)
        if isinstance(data_bytes, str):
            raise ConfigError(data_bytes)
        text = data_bytes.decode("utf-8")
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
        except (ValueError, RecursionError) as exc:  # e.g. int digits limit, deep nesting
            raise ConfigError(f"{path}: invalid JSON: {_first_line(exc)}") from exc
        lines: dict[Loc, int] = {}
    else:
        import yaml  # here: a YAML parser is only needed for a YAML file

        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
            lines = _line_map(node, path) if node is not None else {}
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(f"{where}: invalid YAML: {problem}") from exc
        except ConfigError:
            raise
        except (ValueError, RecursionError) as exc:  # int digits limit, very deep nesting
            raise ConfigError(f"{path}: invalid YAML: {_first_line(exc)}") from exc
    if data is None:
        raise ConfigError(f"{what} file '{path}' is empty.")
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: a {what.lower()} file must hold a mapping of fields, "
            f"not a {type(data).__name__}."
        )
    return data, lines


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _line_map(root: yaml.Node, path: Path) -> dict[Loc, int]:
    """Field path → line, after checking that aliases neither recurse nor explode."""
    import yaml

    sizes: dict[int, int] = {}

    def size(node: yaml.Node, active: set[int]) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise ConfigError(
                f"{path}:{node.start_mark.line + 1}: a YAML alias refers to a value that "
                "contains it; recursive data is not allowed"
            )
        active.add(key)
        total = 1
        if isinstance(node, yaml.MappingNode):
            total += sum(size(k, active) + size(v, active) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            total += sum(size(item, active) for item in node.value)
        active.discard(key)
        sizes[key] = total
        return total

    if size(root, set()) > MAX_VALUES:
        raise ConfigError(
            f"{path}: the document expands to more than {MAX_VALUES} values through "
            "YAML aliases; write the values out instead"
        )
    lines: dict[Loc, int] = {}

    def walk(node: yaml.Node, loc: Loc) -> None:
        lines.setdefault(loc, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                child = (*loc, str(key.value))
                lines.setdefault(child, key.start_mark.line + 1)
                walk(value, child)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                walk(item, (*loc, index))

    walk(root, ())
    return lines


def _data_loc(loc: Loc, data: Any) -> Loc:
    """``loc`` without the union-branch names pydantic adds ("str", "function-after[…]").

    Walks ``data`` along ``loc``: a part that would index into a plain value is not
    a place in the user's file, so it and everything after it are dropped.
    """
    kept: list[str | int] = []
    current = data
    for index, part in enumerate(loc):
        if isinstance(current, dict):
            kept.append(part)
            if part not in current:  # a missing or unknown field: nothing left to walk
                kept.extend(p for p in loc[index + 1 :] if not _looks_like_branch(p))
                break
            current = current[part]
        elif isinstance(current, list) and isinstance(part, int) and 0 <= part < len(current):
            kept.append(part)
            current = current[part]
        else:
            break
    return tuple(kept)


_BRANCH = re.compile(r"^[a-z][a-z-]*\[.*\]$|^(str|int|float|bool|bytes|none)$", re.DOTALL)


def _looks_like_branch(part: str | int) -> bool:
    return isinstance(part, str) and bool(_BRANCH.match(part))


def format_validation(
    exc: ValidationError,
    source: Path | None,
    lines: dict[Loc, int],
    prefix: Loc = (),
    data: Any = None,
) -> str:
    """One line per problem: ``file:line: field.path: message``, without repeats.

    With ``data`` (what was validated), pydantic's union-branch names are dropped
    from field paths by walking the data; without it, by their look.
    """
    out: list[str] = []
    for error in exc.errors():
        raw: Loc = tuple(error["loc"])
        if data is not None:
            raw = _data_loc(raw, data)
        else:
            raw = tuple(part for part in raw if not _looks_like_branch(part))
        loc: Loc = (*prefix, *raw)
        line = find_line(lines, loc)
        where = f"{source}:{line}" if source and line else (str(source) if source else "")
        message = " ".join(error["msg"].removeprefix("Value error, ").split())
        if error["type"] == "extra_forbidden":
            message = "unknown field (check its spelling; extra fields are not allowed)"
        field = field_path(loc)
        text = f"{where}: {field}: {message}" if where else f"{field}: {message}"
        if text not in out:
            out.append(text)
    return "\n".join(out)


def find_line(lines: dict[Loc, int], loc: Loc) -> int | None:
    """The line of ``loc``, or of its nearest parent that has one."""
    while loc:
        if loc in lines:
            return lines[loc]
        loc = loc[:-1]
    return None
