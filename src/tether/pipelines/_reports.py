"""Reports rebuilt from a pipeline's journal: stages, members, parameters."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..result import RunResult
from .journal import StepRecord
from .step import Step


def when(seconds: float | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC)


def now() -> datetime:
    return datetime.now(UTC)


def all_succeeded(record: StepRecord, count: int) -> bool:
    for index in range(count):
        member = record.members.get(index)
        if member is None or member.result is None or member.result.get("state") != "SUCCEEDED":
            return False
    return True


def recorded_result(data: dict[str, Any]) -> RunResult:
    """A journaled RunResult, validated; the log paths inside its run folder are built
    from the folder's path, which is cheaper than validating each (resuming a large
    pipeline builds one per run)."""
    run_dir = data.get("run_dir")
    if isinstance(run_dir, str) and run_dir:
        folder = Path(run_dir)
        data = {**data, "run_dir": folder}
        for key in ("stdout", "stderr"):
            if data.get(key) == f"{run_dir}/{key}":
                data[key] = folder / key
    return RunResult.model_validate(data)


def json_params(step: Step, index: int) -> dict[str, Any] | None:
    if step.params is None:
        return None
    loaded: dict[str, Any] = json.loads(json.dumps(step.params[index], default=repr))
    return loaded
