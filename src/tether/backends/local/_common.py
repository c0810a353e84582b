"""What the local backend's submitter and handles share: our supervisor children, the boot id."""

from __future__ import annotations

import json
import os
import signal
from collections import deque
from functools import cache
from pathlib import Path
from typing import Any

from ... import _proc
from ..._files import write_atomic
from ...records import FORMAT, VERSION

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
#: Blocked in a new supervisor from its first instruction: the cancels (held until its
#: handlers are in place) and what a terminal sends, which it drops once in a session
#: of its own (protocol item 0 of supervise.c).
_SPAWN_MASK = (*_CANCEL_SIGNALS, signal.SIGQUIT, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU)
#: Asks the supervisor to leave for a session of its own (see supervise.c, item 0).
_OWN_SESSION = {b"TETHER_SUPERVISOR_SETSID": b"1"}

# Supervisors we started are our children until they exit; reap the finished ones
# now and then so a long-lived submitter never piles up zombies. ``_rounds`` is the
# order in which ``_reap_finished`` visits them, a few per call, so that a submit
# costs the same with ten thousand runs going as with one.
_children: set[int] = set()
_rounds: deque[int] = deque()
#: Seconds a resubmit waits for a supervisor at the gate of a dead submit to exit.
_GATE_PATIENCE = 30.0


def _adopt(pid: int) -> None:
    """Count ``pid`` among our supervisor children until it is reaped."""
    _children.add(pid)
    _rounds.append(pid)


def _reap_finished(limit: int = 16) -> None:
    """Reap up to ``limit`` of our ended supervisors, taking turns among them all."""
    for _ in range(min(limit, len(_rounds))):
        pid = _rounds.popleft()
        if pid not in _children:
            continue  # reaped by its handle already
        if _proc.reaped(pid):
            _children.discard(pid)
        else:
            _rounds.append(pid)


def _reap(pid: int) -> None:
    """Reap our supervisor ``pid`` if it has exited (it may still be about to)."""
    if pid in _children and _proc.reaped(pid):
        _children.discard(pid)


@cache
def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _process_env(extra: dict[str, str]) -> dict[bytes, bytes]:
    """This process's environment with ``extra`` on top, as bytes for ``posix_spawn``.

    Copied from the bytes ``os.environ`` keeps (one C-level copy): going through
    ``os.environ`` itself decodes and re-encodes every variable, on every submit.
    """
    data: dict[bytes, bytes] | None = getattr(os.environ, "_data", None)
    env = dict(data) if isinstance(data, dict) else dict(os.environb)
    for key, value in extra.items():
        env[os.fsencode(key)] = os.fsencode(value)
    return env


_RECORD = (
    f'{{"format": {json.dumps(FORMAT)}, "version": {json.dumps(VERSION)}, '
    '"backend": %s, "run_id": %s, "job": %s, "config": %s, "data": %s}\n'
)


def _record_bytes(record: dict[str, Any], config_json: str) -> bytes:
    """``handle.json``'s bytes for ``record`` (``RunHandle.to_record()``'s layout), the
    same as ``write_record`` writes, with the config already encoded: a backend's
    config never changes, so its part is encoded once, not on every submit."""
    return (
        _RECORD
        % (
            json.dumps(record["backend"]),
            json.dumps(record["run_id"]),
            json.dumps(record["job"]),
            config_json,
            json.dumps(record["data"]),
        )
    ).encode()


def _write_new_record(run_dir: Path, data: bytes) -> None:
    """Write ``handle.json`` into a run folder just made (owner-only, nobody else
    writes there): through a fixed temporary name and a rename, as ``write_record``
    does, without ``mkstemp``'s random names and file objects (a submit's hot path)."""
    folder = str(run_dir)
    tmp = f"{folder}/.handle.json.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
    os.replace(tmp, f"{folder}/handle.json")


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
