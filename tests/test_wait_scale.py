"""Awaiting more runs at once than the process may open files (correctness, not speed).

Each run blocks on a shared lock the waiting process holds, so every one of them is
still going when the waits begin; the waiting process runs under ``ulimit -n 256``
(soft and hard), where one pidfd per waiting handle would fail with EMFILE long
before the last one. The figures (CPU and memory per handle) are the bench's job:
``bench/wait_scale.py``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

import tether
from tether import Job, LocalConfig, _exitwait, _proc
from tether.backends.local import LocalRunHandle

pytestmark = pytest.mark.anyio

# The waiting side (the bench's too): an argument says whether it submits the runs
# itself or loads the records another process wrote.
WAITER = Path(__file__).resolve().parents[1] / "bench" / "_waiter.py"


def _waiter(limit: int, count: int, runs_dir: Path, mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(WAITER), str(limit), str(count), str(runs_dir), mode, "1.0"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def _check(report: dict[str, object], count: int, limit: int) -> None:
    assert report["early"] == 0, "runs ended before the lock was released"
    assert report["runs"] == count
    assert report["states"] == ["SUCCEEDED"]
    assert isinstance(report["fds"], int) and report["fds"] < limit
    assert report["pidfds"] == report["budget"]  # the budget is used to the full …
    assert report["shared"] == count - int(str(report["budget"]))  # … the rest shares
    assert report["left"] == 0  # and every shared wait was let go


@pytest.mark.timeout(300)
def test_two_thousand_waits_in_256_files(tmp_path: Path) -> None:
    count, limit = 2000, 256
    waiter = _waiter(limit, count, tmp_path, "submit")
    out, _ = waiter.communicate(timeout=280)
    assert waiter.returncode == 0
    _check(json.loads(out.splitlines()[-1]), count, limit)


@pytest.mark.timeout(300)
async def test_reattached_waits_in_256_files(tmp_path: Path) -> None:
    """Handles loaded from their records (the runs are not the waiter's children)."""
    import fcntl

    count, limit = 600, 256
    gate = tmp_path / "gate"
    with gate.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        backend = LocalConfig(runs_dir=tmp_path, capture_output=False).create()
        job = Job(command=["flock", "-s", str(gate), "true"])
        handles = [await backend.submit(job) for _ in range(count)]
        waiter = _waiter(limit, count, tmp_path, "attach")
        assert waiter.stdout is not None and waiter.stdin is not None
        assert waiter.stdout.readline().strip() == "ready"
        fcntl.flock(lock, fcntl.LOCK_UN)
    out, _ = waiter.communicate("go\n", timeout=200)
    assert waiter.returncode == 0
    _check(json.loads(out.splitlines()[-1]), count, limit)
    assert {(await h.wait()).state for h in handles} == {tether.RunState.SUCCEEDED}


@pytest.mark.timeout(120)
async def test_a_shared_wait_sees_a_supervisor_die_without_a_record(tmp_path: Path) -> None:
    """Past the pidfd budget, a supervisor SIGKILLed (no exit.json) is found by the sweep."""
    backend = LocalConfig(runs_dir=tmp_path).create()
    handle = await backend.submit(Job(command=["sleep", "60"]))
    assert isinstance(handle, LocalRunHandle)
    budget = _exitwait._budget
    saved = budget.limit
    budget.limit = budget.used  # no pidfd to spare: this wait shares the inotify one
    results: list[tether.RunResult] = []
    try:
        async with anyio.create_task_group() as tg:

            async def wait() -> None:
                results.append(await handle.wait())

            tg.start_soon(wait)
            with anyio.fail_after(30):
                while _exitwait.overflow_waiters() != 1:  # noqa: ASYNC110 (no event to wait on)
                    await anyio.sleep(0.02)
            # The supervisor first (killing the command first would let it record the end).
            os.kill(handle.pid, signal.SIGKILL)
            _proc.kill_session(handle.pid, signal.SIGKILL)  # then the command it left
    finally:
        budget.limit = saved
    assert results[0].state is tether.RunState.LOST
    assert "without recording" in (results[0].error or "")
    assert _exitwait.overflow_waiters() == 0
