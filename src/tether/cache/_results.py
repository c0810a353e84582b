"""Recorded results: paths made relative to the run folder and back, Call outcomes.

An entry's result holds paths relative to its run folder (a hit gets a folder of its
own); a Call's value or exception travels as a blob restored under :data:`OUTCOME`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..call import outcome_fields
from ..result import RunResult

#: What a store write that failed raises: files, and SQLite errors a store let through.
STORE_ERRORS = (OSError, sqlite3.Error)


def attempt(action: Callable[[Any], None], argument: Any) -> BaseException | None:
    """Run a store write; return what it raised (a store error) instead of raising."""
    try:
        action(argument)
    except STORE_ERRORS as exc:
        return exc
    return None


#: Where a hit's run folder gets a Call's recorded outcome (value or exception).
OUTCOME = ".tether-outcome.pkl"


def with_value(result: RunResult, run_dir: Path | None) -> RunResult:
    """``result`` with the Call value or exception recorded in the run folder, if any."""
    if run_dir is None or not (run_dir / OUTCOME).is_file():
        return result
    fields = outcome_fields(run_dir / OUTCOME)
    keep: dict[str, Any] = {
        k: fields[k] for k in ("value", "exception", "traceback") if k in fields
    }
    return result.model_copy(update=keep)


def relative(result: RunResult, run_dir: Path | None) -> tuple[dict[str, Any], list[Path]]:
    """The result as JSON with paths relative to the run folder, and the files to keep."""
    data = result.model_dump(mode="json")
    files: list[Path] = []

    def rel(path: Path | None) -> str | None:
        if path is None or run_dir is None or not path.is_file():
            return None
        try:
            relative = path.resolve().relative_to(run_dir.resolve())
        except ValueError:
            return None
        files.append(path)
        return relative.as_posix()

    data["stdout"] = rel(result.stdout)
    data["stderr"] = rel(result.stderr)
    data["outputs"] = [r for r in (rel(p) for p in result.outputs) if r is not None]
    data["run_dir"] = None  # a hit gets its own folder
    return data, files


def absolute(data: dict[str, Any], run_id: str, run_dir: Path) -> RunResult:
    """A recorded result in a new run folder."""
    fixed = dict(data)
    fixed["run_id"] = run_id
    for stream in ("stdout", "stderr"):
        fixed[stream] = None if data.get(stream) is None else run_dir / data[stream]
    fixed["outputs"] = [run_dir / p for p in data.get("outputs", [])]
    fixed["run_dir"] = run_dir
    return RunResult.model_validate(fixed)
