"""A local run's supervisor leaves its submitter's session itself (supervise.c, item 0).

tether spawns it in the submitter's session and it calls setsid as its first act: a
setsid inside posix_spawn would stall the submitter on a busy machine. So a run still
leads a session of its own, the variable that asks for it never reaches the command,
and a Ctrl-C the terminal sent in the moment before the setsid is dropped, while a
signal a process sent (a cancel) is kept.
"""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

import tether
from tether import Job, LocalConfig, RunState
from tether._supervisor import supervisor_argv

pytestmark = pytest.mark.anyio

SUPPORT = str(Path(__file__).with_name("session_support.py"))


@pytest.fixture(params=["c", "python"])
def supervisor(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.setenv("TETHER_SUPERVISOR", str(request.param))
    return supervisor_argv()


async def test_a_run_leads_its_own_session_and_the_request_stays_with_the_supervisor(
    tmp_path: Path, supervisor: list[str]
) -> None:
    backend = LocalConfig(runs_dir=tmp_path / "runs").create()
    probe = "import os; print(os.getsid(0), os.environ.get('TETHER_SUPERVISOR_SETSID'))"
    handle = await backend.submit(Job(command=[sys.executable, "-c", probe]))
    result = await handle.wait()
    assert result.state is RunState.SUCCEEDED, result.error
    sid, variable = (result.stdout.read_text() if result.stdout else "").split()  # type: ignore[union-attr]
    assert int(sid) == handle.pid != os.getsid(0)
    assert variable == "None"


def _start(supervisor: list[str], run_dir: Path, how: str) -> int:
    """Run session_support.py on a new pty; type Ctrl-C when its child waits for one."""
    run_dir.mkdir(parents=True)
    master, slave = pty.openpty()
    ready_read, ready_write = os.pipe()
    proc = subprocess.Popen(
        [sys.executable, SUPPORT, json.dumps(supervisor), str(run_dir), how, str(ready_write)],
        stdin=slave,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        pass_fds=(ready_write,),
    )
    os.close(slave)
    os.close(ready_write)
    try:
        if how == "terminal":
            assert os.read(ready_read, 1) == b"r"
            os.write(master, b"\x03")  # Ctrl-C: SIGINT to the terminal's foreground group
        return proc.wait(timeout=60)
    finally:
        os.close(ready_read)
        os.close(master)


@pytest.mark.parametrize(("how", "reason"), [("terminal", "exited"), ("process", "cancelled")])
def test_a_signal_pending_before_the_setsid_counts_only_if_a_process_sent_it(
    tmp_path: Path, supervisor: list[str], how: str, reason: str
) -> None:
    run_dir = tmp_path / "run"
    assert _start(supervisor, run_dir, how) == 0
    outcome = json.loads((run_dir / "exit.json").read_text())
    assert outcome["reason"] == reason
    if how == "terminal":
        assert outcome["exit_code"] == 0
        sid, variable = (run_dir / "stdout").read_text().split()
        assert sid != str(os.getsid(0))
        assert variable == "None"


async def test_a_cancel_right_after_submit_is_a_cancel(
    tmp_path: Path, supervisor: list[str]
) -> None:
    """Sent at once, it may reach the supervisor before its setsid: it still counts."""
    backend = LocalConfig(runs_dir=tmp_path / "runs").create()
    for _ in range(5):
        handle = await backend.submit(Job(command=["sleep", "30"]))
        await handle.cancel()
        assert handle.state is RunState.CANCELLED
    assert isinstance(handle, tether.LocalRunHandle)
