"""Local backend under faults: crafted records, escaping processes, kills, full disks.

Trial loops are bounded and stop by themselves; ``TETHER_TRIALS`` scales them
(the closing figures of issue 14 come from ``TETHER_TRIALS=100``).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

import tether
from tether import Job, LocalConfig, RunState
from tether._proc import is_running, start_ticks

from .cli_support import CLI
from .services import cancel_from_a_cancelled_caller, small_tmpfs

pytestmark = pytest.mark.anyio

TREE = str(Path(__file__).with_name("tree_support.py"))
KINDS = ("child", "setpgid", "setsid", "double_fork", "ignore_term")
TRIALS = int(os.environ.get("TETHER_TRIALS", "10"))


def local(tmp_path: Path, **fields: object) -> tether.LocalBackend:
    return LocalConfig(runs_dir=tmp_path / "runs", **fields).create()  # type: ignore[arg-type]


@pytest.fixture(params=["c", "python"])
def supervisor(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both supervisors keep the same promises."""
    monkeypatch.setenv("TETHER_SUPERVISOR", str(request.param))
    return str(request.param)


@pytest.fixture
def bystander() -> Iterator[subprocess.Popen[bytes]]:
    """A process of the test's own, leading its own session, that must survive."""
    proc = subprocess.Popen(["sleep", "1000"], start_new_session=True)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


# -- a handle file is input, not authority ---------------------------------------------


async def _crafted(tmp_path: Path, pid: int, ticks: int | None) -> Path:
    """A real finished run's record, rewritten to name ``pid`` and a live-looking run."""
    handle = await local(tmp_path).submit(Job(command="true"))
    await handle.wait()
    (handle.run_dir / "exit.json").unlink()  # so the record looks like a running run
    record = json.loads((handle.run_dir / "handle.json").read_text())
    record["data"].update(pid=pid, start_ticks=ticks)
    crafted = tmp_path / "crafted.json"
    crafted.write_text(json.dumps(record))
    return crafted


@pytest.mark.parametrize("ticks", ["real", "null"])
async def test_crafted_pid_is_never_signalled(
    tmp_path: Path, bystander: subprocess.Popen[bytes], ticks: str
) -> None:
    pid = bystander.pid
    crafted = await _crafted(tmp_path, pid, start_ticks(pid) if ticks == "real" else None)
    handle = await tether.load_handle(crafted)
    await handle.cancel()
    assert handle.state is RunState.LOST
    assert handle.last_result is not None and "not touching it" in (handle.last_result.error or "")
    await anyio.sleep(0.2)
    assert bystander.poll() is None, "tether signalled a process it did not start"


async def test_crafted_pid_one_is_lost(tmp_path: Path) -> None:
    handle = await tether.load_handle(await _crafted(tmp_path, 1, start_ticks(1)))
    await handle.cancel()
    assert handle.state is RunState.LOST
    assert "pid 1" in (handle.last_result.error or "")  # type: ignore[union-attr]


async def test_crafted_pid_through_the_cli(
    tmp_path: Path, bystander: subprocess.Popen[bytes]
) -> None:
    crafted = await _crafted(tmp_path, bystander.pid, start_ticks(bystander.pid))
    cli = CLI(tmp_path)
    for verb in ("cancel", "status"):
        done = cli(verb, crafted)
        assert "Traceback" not in done.stderr
        assert "LOST" in done.stdout + done.stderr or "lost" in done.stdout + done.stderr
    assert bystander.poll() is None


async def test_crafted_pid_naming_the_folder_in_argv_is_not_enough(tmp_path: Path) -> None:
    """A process whose command line merely mentions the run folder is not its supervisor."""
    handle = await local(tmp_path).submit(Job(command="true"))
    await handle.wait()
    decoy = subprocess.Popen(  # noqa: ASYNC220 (a bystander, started once)
        [sys.executable, "-c", "import time; time.sleep(1000)", str(handle.run_dir)],
        start_new_session=True,
    )
    try:
        await anyio.sleep(0.1)
        crafted = await _crafted(tmp_path / "b", decoy.pid, start_ticks(decoy.pid))
        record = json.loads(crafted.read_text())
        record["data"]["run_dir"] = str(handle.run_dir)
        (handle.run_dir / "exit.json").unlink()
        crafted.write_text(json.dumps(record))
        again = await tether.load_handle(crafted)
        await again.cancel()
        assert again.state is RunState.LOST
        assert decoy.poll() is None
    finally:
        decoy.kill()
        decoy.wait()


# -- cancel and timeouts leave nothing running -------------------------------------------


def _tree_pids(pidfile: Path) -> list[tuple[int, int]]:
    try:
        lines = pidfile.read_text().split("\n")
    except FileNotFoundError:
        return []
    return [(int(p), int(t)) for p, t in (line.split() for line in lines if line.strip())]


async def _tree_up(pidfile: Path, count: int) -> list[tuple[int, int]]:
    with anyio.fail_after(30):
        while len(pids := _tree_pids(pidfile)) < count:  # noqa: ASYNC110 (another process writes)
            await anyio.sleep(0.02)
    return pids


def _survivors(pids: list[tuple[int, int]]) -> list[int]:
    return [pid for pid, ticks in pids if is_running(pid, ticks)]


async def test_cancel_trials_leave_no_survivor(tmp_path: Path, supervisor: str) -> None:
    """Mixed trees (child, setpgid, setsid, double fork, TERM ignored): none survives."""
    backend = local(tmp_path, cancel_grace=0.3)
    survivors: list[int] = []
    for trial in range(TRIALS):
        kinds = KINDS if trial % 2 else random.Random(trial).sample(KINDS, 2)
        pidfile = tmp_path / f"pids-{trial}"
        command = [sys.executable, TREE, ",".join(kinds), str(pidfile)]
        handle = await backend.submit(Job(command=command))
        pids = await _tree_up(pidfile, len(kinds) + 1)
        await handle.cancel()
        assert handle.state is RunState.CANCELLED
        survivors += _survivors(pids)
    assert survivors == [], f"{len(survivors)} processes survived {TRIALS} cancels"


async def test_timeout_leaves_no_survivor_when_reported(tmp_path: Path, supervisor: str) -> None:
    """A TIMED_OUT result comes only once nothing of the run is left."""
    pidfile = tmp_path / "pids"
    job = Job(
        command=[sys.executable, TREE, ",".join(KINDS), str(pidfile)],
        resources={"walltime": 1.5},  # type: ignore[arg-type]
    )
    handle = await local(tmp_path, cancel_grace=0.3).submit(job)
    pids = await _tree_up(pidfile, len(KINDS) + 1)
    result = await handle.wait()
    assert result.state is RunState.TIMED_OUT
    assert _survivors(pids) == []


async def test_normal_exit_stops_escaped_daemons(tmp_path: Path, supervisor: str) -> None:
    """A command that leaves daemons behind (new sessions included) ends with them gone."""
    pidfile = tmp_path / "pids"
    script = textwrap.dedent(
        f"""
        import subprocess, sys, time
        import os
        kinds, path = "setsid,double_fork,ignore_term", {str(pidfile)!r}
        subprocess.Popen([sys.executable, {TREE!r}, kinds, path])
        while not os.path.exists(path) or len(open(path).read().split()) < 8:
            time.sleep(0.02)
        """
    )
    handle = await local(tmp_path, cancel_grace=0.3).submit(
        Job(command=[sys.executable, "-c", script])
    )
    result = await handle.wait()
    assert result.ok, result.error
    assert _survivors(_tree_pids(pidfile)) == []


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # trio: the move_on_after test
@pytest.mark.parametrize("how", ["task_cancel", "wait_for"])
async def test_cancel_finishes_when_its_caller_is_cancelled(
    tmp_path: Path, supervisor: str, how: str
) -> None:
    pidfile = tmp_path / "pids"
    handle = await local(tmp_path, cancel_grace=0.3).submit(
        Job(command=[sys.executable, TREE, "ignore_term", str(pidfile)])
    )
    pids = await _tree_up(pidfile, 2)
    await cancel_from_a_cancelled_caller(handle, how)
    assert handle.state is RunState.CANCELLED
    assert _survivors(pids) == []


async def test_cancel_finishes_inside_a_cancelled_scope(tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    handle = await local(tmp_path, cancel_grace=0.3).submit(
        Job(command=[sys.executable, TREE, "ignore_term", str(pidfile)])
    )
    pids = await _tree_up(pidfile, 2)
    with anyio.move_on_after(0.0001):
        await handle.cancel()
    assert handle.state is RunState.CANCELLED
    assert _survivors(pids) == []


# -- no run without a record, no run twice ----------------------------------------------

SUBMITTER = """
import asyncio, sys
from pathlib import Path
from tether import Job, LocalConfig

async def main():
    backend = LocalConfig(runs_dir=Path(sys.argv[1])).create()
    job = Job(name="k", command=["/bin/sh", "-c", f"echo ran >> {sys.argv[3]}"])
    print("ready", flush=True)
    await backend.submit(job, run_id=sys.argv[2])
    print("submitted", flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


async def test_killed_submitters_leave_no_run_without_record_and_none_twice(
    tmp_path: Path, supervisor: str
) -> None:
    runs = tmp_path / "runs"
    backend = LocalConfig(runs_dir=runs).create()
    outcomes = {"killed before the run": 0, "killed after": 0}
    for trial in range(TRIALS * 2):
        run_id, counter = f"kill-{trial}", tmp_path / f"count-{trial}"
        job = Job(name="k", command=["/bin/sh", "-c", f"echo ran >> {counter}"])
        with subprocess.Popen(  # noqa: ASYNC220 (the submitter the trial kills)
            [sys.executable, "-c", SUBMITTER, str(runs), run_id, str(counter)],
            stdout=subprocess.PIPE,
            text=True,
        ) as proc:
            assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
            time.sleep(random.Random(trial).uniform(0, 0.02))  # noqa: ASYNC251 (a kill point)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        await anyio.sleep(0.05)  # a supervisor at the gate sees its end
        handle = await backend.find(job, run_id)
        outcomes["killed before the run" if handle is None else "killed after"] += 1
        if handle is None:
            handle = await backend.submit(job, run_id=run_id)  # resume: run it now
        result = await handle.wait()
        assert result.ok, result.error
        assert counter.read_text() == "ran\n", f"{run_id} ran {counter.read_text().count('ran')}x"
        assert (runs / run_id / "handle.json").is_file()
    assert sum(outcomes.values()) == TRIALS * 2


# -- full disks -------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 4 MiB file system (tmpfs), unmounted afterwards."""
    with small_tmpfs(tmp_path / "disk", "4m") as mount:
        yield mount


async def test_run_that_fills_the_disk_ends_failed_with_the_reason(
    small_disk: Path, supervisor: str
) -> None:
    backend = LocalConfig(runs_dir=small_disk / "runs").create()
    handle = await backend.submit(Job(command="head -c 20000000 /dev/zero > fill"))
    result = await handle.wait()
    assert result.state is RunState.FAILED
    assert "no space left on device" in (result.error or "")
    assert json.loads((handle.run_dir / "exit.json").read_text())["disk_full"] is True
    assert not (handle.run_dir / ".exit.json.tmp").exists()


async def test_submit_on_a_full_disk_is_refused_and_leaves_nothing(small_disk: Path) -> None:
    (small_disk / "fill").write_bytes(b"")
    subprocess.run(["sh", "-c", f"head -c 20000000 /dev/zero > {small_disk}/fill"], check=False)
    backend = LocalConfig(runs_dir=small_disk / "runs").create()
    with pytest.raises(tether.SubmitError, match=r"space"):
        await backend.submit(Job(command="echo hi"))
    assert list((small_disk / "runs").iterdir()) == []
