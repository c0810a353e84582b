"""What the local backend's submitter and handles share: our supervisor children, the boot id."""

from __future__ import annotations

import json
import os
import signal
from functools import cache
from pathlib import Path
from typing import Any

from ... import _proc
from ..._files import write_atomic

_CAPABILITIES = frozenset(
    {
        "detached",
        "reattach",
        "find",
        "cancel",
        "logs_follow",
        "commands",
        "calls",
        "timeout",
        "gpus",
    }
)


_CANCEL_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

# Supervisors we started are our children until they exit; reap the finished ones
# now and then so a long-lived submitter never piles up zombies.
_children: set[int] = set()
#: Seconds a resubmit waits for a supervisor at the gate of a dead submit to exit.
_GATE_PATIENCE = 30.0


def _reap_finished() -> None:
    _proc.reap_finished(_children)


@cache
def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _write_outcome(run_dir: Path, outcome: dict[str, Any]) -> None:
    """Record an outcome the supervisor could not, over its reserved file if it made one
    (so it needs no new disk blocks), else as a new file; atomic either way."""
    reserve = run_dir / ".exit.json.tmp"
    data = (json.dumps(outcome) + "\n").encode()
    try:
        fd = os.open(reserve, os.O_WRONLY | os.O_NOFOLLOW)
    except OSError:
        write_atomic(run_dir / "exit.json", data)
        return
    try:
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)
    os.replace(reserve, run_dir / "exit.json")


def _spawn_files(capture: bool, gate: int, ticket: int | None = None) -> list[tuple[Any, ...]]:
    """stdin from /dev/null; with capture, stdout/stderr too, so the supervisor never
    holds the submitter's pipes open (``$(tether submit …)`` returns at once); the
    gate's read end as fd 3; the locked queue ticket of a run waiting for slots as fd 4."""
    actions: list[tuple[Any, ...]] = [
        (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
        (os.POSIX_SPAWN_DUP2, gate, 3),
    ]
    if ticket is not None:
        actions.append((os.POSIX_SPAWN_DUP2, ticket, 4))
    if capture:
        actions += [
            (os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_WRONLY, 0),
            (os.POSIX_SPAWN_DUP2, 1, 2),
        ]
    return actions
