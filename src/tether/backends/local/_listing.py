"""What ``tether ls`` shows of a local run, read from its files without loading a handle.

A listing of thousands of runs cannot afford a validated :class:`LocalRunHandle` per
run (pydantic models, paths, a ``RunResult``) nor the backend's imports. For the
common cases this module reads the same files the handle's ``refresh()`` reads and
decides the same state, exit code and error, with the same words: a run whose
supervisor recorded ``exit.json``, a run whose supervisor is gone without one
(LOST), and a plain command still running. Anything else (a ``Call``, whose own
outcome file decides; resource slots; a record with unexpected field types) returns
None, and the caller loads the real handle. ``tests/test_ls.py`` checks both ways
agree on every kind of run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ... import _proc
from ..._runs import RunSummary, failure_reason
from ._common import _boot_id


def _read_exit(run_dir: str) -> dict[str, Any] | None:
    # As LocalRunHandle._read_exit: an unreadable or corrupt exit.json counts as none.
    # os.open and a path string: a listing does this for every run, pathlib is costly.
    try:
        fd = os.open(f"{run_dir}/exit.json", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        data = json.loads(b"".join(chunks).decode())
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)
    return data if isinstance(data, dict) else None


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _from_exit(data: dict[str, Any], run_dir: str, timeout: float, capture: bool) -> RunSummary:
    # As LocalRunHandle._result_from_exit, for a command job without slots.
    reason = data.get("reason")
    code = data.get("exit_code")
    error: str | None = None
    if reason == "timeout":
        state = "TIMED_OUT"
        error = f"timed out after {timeout:g}s (process group stopped)"
    elif reason == "cancelled":
        state = "CANCELLED"
        error = "cancelled"
    elif reason == "exited" and code == 0:
        state = "SUCCEEDED"
    else:
        state = "FAILED"
        stderr = Path(run_dir, "stderr") if capture else None
        error = data.get("error") or failure_reason(code, stderr)
        if data.get("disk_full"):
            error = (
                f"{error}: no space left on device (the file system of '{Path(run_dir)}' "
                "was full when the run ended)"
            )
    return RunSummary(state, code if isinstance(code, int) else None, error)


def summarize(record: dict[str, Any], pid_exists: Callable[[int], bool]) -> RunSummary | None:
    """The state, exit code and error ``load_handle(record)`` would give, or None.

    Args:
        record: a checked handle record of the local backend (``read_record``).
        pid_exists: a cheap first test of whether a pid exists on this machine
            (a listing reads ``/proc`` once for all its runs); a pid that passes is
            checked in full, as the handle checks it.

    Returns:
        None when only the real handle can tell (the caller then loads it).
    """
    job, config, data = record["job"], record["config"], record["data"]
    if "target" in job or data.get("slots", False) is not False:
        return None  # a Call's outcome file, or resource slots: the handle decides
    capture = config.get("capture_output", True)
    run_dir_text, pid, ticks = data.get("run_dir"), data.get("pid"), data.get("start_ticks")
    timeout, started, boot_id = data.get("timeout"), data.get("started_at"), data.get("boot_id", "")
    if not (
        isinstance(capture, bool)
        and isinstance(run_dir_text, str)
        and run_dir_text.startswith("/")  # joined as text below, so never relative
        and isinstance(pid, int)
        and not isinstance(pid, bool)
        and (ticks is None or (isinstance(ticks, int) and not isinstance(ticks, bool)))
        and isinstance(boot_id, str)
        and _number(timeout)
        and _number(started)
    ):
        return None
    exit_data = _read_exit(run_dir_text)
    if exit_data is None:
        run_dir = Path(run_dir_text)  # the handle's words name the folder as a Path does
        if not run_dir.is_dir():
            return RunSummary("LOST", None, f"run folder {run_dir} no longer exists")
        alive = (
            not (boot_id and boot_id != _boot_id())
            and pid_exists(pid)
            and _proc.is_running(pid, ticks)
        )
        if alive:
            impostor = _proc.not_supervisor_of(pid, ticks, str(run_dir))
            if impostor is not None:
                return RunSummary("LOST", None, f"{impostor}; not touching it")
            return RunSummary("RUNNING")
        exit_data = _read_exit(run_dir_text)  # it may have finished between the two looks
        if exit_data is None:
            return RunSummary("LOST", None, "the run's supervisor ended without recording a status")
    error, code = exit_data.get("error"), exit_data.get("exit_code")
    if (
        not (error is None or isinstance(error, str))
        or isinstance(code, bool)
        or not all(
            exit_data.get(key) is None or _number(exit_data.get(key))
            for key in ("started", "ended")
        )
    ):
        return None  # the handle's RunResult would refuse it: let it say so
    return _from_exit(exit_data, run_dir_text, float(timeout), capture)
