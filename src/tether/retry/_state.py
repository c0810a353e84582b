"""The shared state of a retried run: its attempts, in a folder every handle reads.

A retried run has a folder of its own (``<runs_dir>/<run_id>/``) holding
``retry.json`` (the attempts so far, whether it was cancelled, whether the last
attempt is final) and ``.lock``. Every handle of the run, in any process, moves
it on under the lock (an exclusive ``flock``, released by the kernel when a
process dies, so a crashed holder cannot wedge it): whoever first sees an attempt
end records it and plans the next one, whoever first finds it due submits it.
``retry.json`` is written to a temporary file and renamed, so a crash leaves the
old state or the new one. The saved handle record holds a copy of the same state:
the folder wins when it knows more (it is checked to be this run's first).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .._files import make_private_dir, write_json_atomic
from ..result import RunState

STATE_FILE = "retry.json"
LOCK_FILE = ".lock"


class Attempt(BaseModel):
    """One attempt of a retried run: its inner run, and how it ended.

    An attempt is *planned* (``record`` is None: due at ``not_before``), then
    *submitted* (``record`` holds the inner handle's saved record), then *ended*
    (``state`` is terminal, ``reason`` says why it did not succeed).
    """

    model_config = ConfigDict(extra="forbid", defer_build=True)

    number: int = Field(ge=1, description="1 for the first attempt, 2 for the first retry...")
    run_id: str | None = Field(None, description="The inner run's id (once known).")
    state: RunState = Field(RunState.PENDING, description="The inner run's last known state.")
    exit_code: int | None = Field(None, description="The inner run's exit code, once ended.")
    reason: str | None = Field(None, description="Why the attempt did not succeed.")
    not_before: float | None = Field(None, description="When it may start (after the back-off).")
    submitted_at: float | None = Field(None, description="When it was submitted (epoch s).")
    ended_at: float | None = Field(None, description="When it was seen ending (epoch s).")
    record: dict[str, Any] | None = Field(
        None, description="The inner handle's saved record (no secrets).", repr=False
    )


class RetryState(BaseModel):
    """Everything handles of one retried run share."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    run_id: str
    attempts: list[Attempt] = Field(min_length=1)
    cancelled: bool = False
    #: True once the last attempt's ending is the run's result (no more attempts).
    done: bool = False

    def knows_more_than(self, other: RetryState) -> bool:
        """Whether this state is at least as far along as ``other``."""
        mine = (len(self.attempts), self.attempts[-1].record is not None, self.done)
        theirs = (len(other.attempts), other.attempts[-1].record is not None, other.done)
        return mine >= theirs or (self.cancelled and not other.cancelled)


def read_state(folder: Path, run_id: str) -> RetryState | None:
    """The folder's state when it is this run's (None when missing, foreign or corrupt)."""
    try:
        data = json.loads((folder / STATE_FILE).read_bytes()[: 16 << 20])
        state = RetryState.model_validate(data)
    except (OSError, ValueError, ValidationError):
        return None
    return state if state.run_id == run_id else None


def write_state(folder: Path, state: RetryState) -> None:
    """Write ``state`` atomically (temporary file and rename), making the folder if gone."""
    make_private_dir(folder)
    write_json_atomic(folder / STATE_FILE, state.model_dump(mode="json"))


@contextlib.asynccontextmanager
async def locked(folder: Path) -> AsyncIterator[None]:
    """Hold the run's exclusive lock (every process, every handle) while inside."""
    make_private_dir(folder)
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        delay = 0.005
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                await anyio.sleep(delay)  # another handle is moving the run on: briefly
                delay = min(delay * 2, 0.1)
        yield
    finally:
        os.close(fd)  # closing releases the lock
