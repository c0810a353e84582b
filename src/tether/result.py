"""Run states and the result of a finished (or last observed) run."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import anyio
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from . import _html


def utc_time(seconds: Any) -> datetime | None:
    """A UTC datetime from seconds since the epoch (as run records store times), or None.

    None too for a time no datetime can hold (NaN, infinite, past the year 9999): a
    record is input, and a mangled time in one is no reason for its load to fail.
    """
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        return None
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        return None


class RunState(StrEnum):
    """Where a run is in its life. Terminal states never change again."""

    PENDING = "PENDING"  # accepted by the backend, not started yet (queued)
    RUNNING = "RUNNING"  # started; its processes or tasks are alive
    SUCCEEDED = "SUCCEEDED"  # ended on its own with success (exit code 0)
    FAILED = "FAILED"  # ended on its own with failure, or could not start
    CANCELLED = "CANCELLED"  # ended because someone called cancel()
    TIMED_OUT = "TIMED_OUT"  # ended because the backend enforced the timeout
    LOST = "LOST"  # can no longer be found; its outcome is unknown

    @property
    def is_terminal(self) -> bool:
        """True for the states a run never leaves."""
        return self not in (RunState.PENDING, RunState.RUNNING)

    def can_become(self, new: RunState) -> bool:
        """Whether the state machine allows moving from this state to ``new``."""
        if self is new:
            return True
        if self.is_terminal:
            return False
        return not (self is RunState.RUNNING and new is RunState.PENDING)


class RunResult(BaseModel):
    """What a run came to: its state, exit code, times, logs and outputs.

    For ``Call`` jobs, ``value`` is the function's return value and, when the call
    raised, ``exception`` the exception (chained to the remote traceback) and
    ``traceback`` its text. Neither ``value`` nor ``exception`` is part of the JSON
    form (``model_dump(mode="json")``): saved records never hold pickled objects.
    """

    model_config = ConfigDict(
        frozen=True, extra="forbid", arbitrary_types_allowed=True, defer_build=True
    )

    run_id: str
    state: RunState
    exit_code: int | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    stdout: Path | None = None
    stderr: Path | None = None
    outputs: list[Path] = []
    #: The run's folder (logs, outputs, records), for backends that keep one.
    run_dir: Path | None = None
    error: str | None = None
    value: Any = Field(None, exclude=True)
    exception: BaseException | None = Field(None, exclude=True)
    traceback: str | None = None

    # Output kept in memory by backends without run folders (the inline backend).
    _captured: dict[str, str] | None = PrivateAttr(None)

    def with_output(self, stdout: str, stderr: str) -> RunResult:
        """This result with captured output that ``read_stdout``/``read_stderr`` return."""
        self._captured = {"stdout": stdout, "stderr": stderr}
        return self

    @property
    def ok(self) -> bool:
        """True when the run succeeded."""
        return self.state is RunState.SUCCEEDED

    @property
    def duration(self) -> float | None:
        """Seconds between start and end, when both are known."""
        if self.started_at is None or self.ended_at is None:
            return None
        return (self.ended_at - self.started_at).total_seconds()

    def _repr_html_(self) -> str:
        """Jupyter's rendering: state, exit code, times, run folder, logs, outputs, error."""
        return _html.result_html(self)

    async def read_stdout(self) -> str:
        """The run's standard output as text ('' when it was not captured)."""
        if self.stdout is None and self._captured is not None:
            return self._captured["stdout"]
        return await _read_text(self.stdout)

    async def read_stderr(self) -> str:
        """The run's standard error as text ('' when it was not captured)."""
        if self.stderr is None and self._captured is not None:
            return self._captured["stderr"]
        return await _read_text(self.stderr)


async def _read_text(path: Path | None) -> str:
    if path is None:
        return ""
    try:
        return await anyio.Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return ""
