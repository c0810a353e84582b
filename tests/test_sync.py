"""The synchronous facade (``tether.sync``): plain scripts, running loops, threads, Ctrl-C.

The script tests run a real ``python script.py`` over the local backend: one process
submits and saves, another loads, waits, reads logs or cancels. The loop tests call the
facade from a coroutine that does not ``await`` it, as a notebook cell does.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio
import pytest

import tether
from tether import (
    ArgumentTypeError,
    Call,
    ConfigError,
    DummyConfig,
    InlineConfig,
    Job,
    LocalConfig,
    RunFailedError,
    RunState,
    SyncRunHandle,
    WaitTimeout,
    sync,
)

from .conftest import run_python

#: Generous: the machine may be busy.
DEADLINE = 60.0

SCRIPT = r'''
"""Drives the facade from a plain script: python script.py ACTION HANDLE [ARG]."""
import json
import sys
from pathlib import Path

import tether
from tether import sync

action, path = sys.argv[1], sys.argv[2]


def report(**data):
    print(json.dumps(data), flush=True)


if action == "submit":  # start a run that ends once the file ARG exists, save it, leave
    go = sys.argv[3]
    job = tether.Job(
        name="gated",
        command=f"echo started; while [ ! -e {go} ]; do sleep 0.05; done; echo finished",
    )
    handle = sync.submit(job, backend=tether.LocalConfig())
    handle.save(path)
    report(run_id=handle.run_id, state=handle.refresh().value)
elif action == "wait":  # re-attach: a short wait times out, then open the gate and wait
    handle = sync.load_handle(path)
    before = handle.state.value
    try:
        handle.wait(timeout=0.2)
        timed_out = False
    except tether.WaitTimeout:
        timed_out = True
    Path(sys.argv[3]).touch()
    result = handle.wait(timeout=60)
    report(
        run_id=handle.run_id,
        before=before,
        timed_out=timed_out,
        state=result.state.value,
        exit_code=result.exit_code,
        lines=list(handle.logs()),
        complete=handle.is_complete(),
    )
elif action == "cancel":
    handle = sync.load_handle(path)
    handle.cancel()
    report(state=handle.state.value, refreshed=handle.refresh().value)
elif action == "interrupt-wait":  # Ctrl-C while blocked in wait(): the run goes on
    handle = sync.submit(tether.Job(name="long", command="sleep 300"))
    handle.save(path)
    print("waiting", flush=True)
    try:
        handle.wait()
    except KeyboardInterrupt:
        report(interrupted=True, state=handle.refresh().value)
elif action == "interrupt-run":  # Ctrl-C in sync.run(): it owns its run and cancels it
    pid_file = Path(sys.argv[3])
    job = tether.Job(name="owned", command=f"echo $$ > {pid_file}; exec sleep 300")
    try:
        sync.run(job)
    except KeyboardInterrupt:
        report(interrupted=True)
elif action == "exit-mid-follow":  # leave with a following log iterator still open
    handle = sync.submit(
        tether.Job(name="chatty", command="echo one; sleep 300"), backend=tether.LocalConfig()
    )
    handle.save(path)
    lines = handle.logs(follow=True)
    report(first=next(lines))
'''


@pytest.fixture
def script(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``script(action, handle_path, *args)``: run SCRIPT as a plain ``python script.py``."""
    path = tmp_path / "script.py"
    path.write_text(SCRIPT)

    def run(*args: str, timeout: float = DEADLINE) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(path), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=tmp_path,
            env=os.environ.copy(),
            check=False,
        )

    return run


def _report(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert proc.returncode == 0, f"script failed ({proc.returncode}):\n{proc.stderr}"
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def _until(check: Callable[[], bool], what: str, deadline: float = DEADLINE) -> None:
    end = time.monotonic() + deadline
    while not check():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in _proc_state(pid)


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return "Z"


# -- plain scripts over the local backend ------------------------------------------------


def test_a_script_submits_and_another_reattaches_waits_and_reads_logs(
    script: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    handle_file, go = tmp_path / "run.json", tmp_path / "go"
    submitted = _report(script("submit", str(handle_file), str(go)))
    assert submitted["state"] in ("PENDING", "RUNNING")
    assert handle_file.exists()

    waited = _report(script("wait", str(handle_file), str(go)))
    assert waited["run_id"] == submitted["run_id"]
    assert waited["before"] == "RUNNING"
    assert waited["timed_out"] is True  # the gate was still shut: the run went on
    assert waited["state"] == "SUCCEEDED" and waited["exit_code"] == 0
    assert waited["lines"] == ["started", "finished"]
    assert waited["complete"] is True


def test_a_script_cancels_a_run_another_started(
    script: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    handle_file = tmp_path / "run.json"
    _report(script("submit", str(handle_file), str(tmp_path / "never")))
    cancelled = _report(script("cancel", str(handle_file)))
    assert cancelled["state"] == "CANCELLED" and cancelled["refreshed"] == "CANCELLED"
    # And this process, through the facade, sees the same.
    handle = sync.load_handle(handle_file)
    assert handle.state is RunState.CANCELLED
    assert handle.wait(timeout=DEADLINE).state is RunState.CANCELLED


def _start_and_interrupt(
    tmp_path: Path, action: str, *args: str, ready: Callable[[], bool] | None = None
) -> dict[str, Any]:
    """Start the script doing ``action``, wait until it blocks, send it SIGINT."""
    path = tmp_path / "script.py"
    path.write_text(SCRIPT)
    proc = subprocess.Popen(
        [sys.executable, str(path), action, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=os.environ.copy(),
    )
    try:
        if ready is None:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "waiting"
        else:
            _until(ready, f"{action} to start")
        time.sleep(0.3)  # not needed for correctness: makes it likely the wait has begun
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, f"script failed ({proc.returncode}):\n{err}"
    return dict(json.loads(out.strip().splitlines()[-1]))


def test_ctrl_c_stops_a_blocking_wait_and_leaves_the_run_going(tmp_path: Path) -> None:
    handle_file = tmp_path / "run.json"
    reported = _start_and_interrupt(tmp_path, "interrupt-wait", str(handle_file))
    assert reported == {"interrupted": True, "state": "RUNNING"}
    handle = sync.load_handle(handle_file)
    assert handle.state is RunState.RUNNING  # the script is gone, the run is not
    handle.cancel()
    assert handle.refresh() is RunState.CANCELLED


def test_ctrl_c_in_run_cancels_the_run_it_owns(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    reported = _start_and_interrupt(
        tmp_path,
        "interrupt-run",
        str(tmp_path / "unused.json"),
        str(pid_file),
        ready=lambda: pid_file.exists() and pid_file.read_text().strip() != "",
    )
    assert reported == {"interrupted": True}
    pid = int(pid_file.read_text())
    _until(lambda: not _alive(pid), "the run's process to be gone")


def test_a_script_that_exits_mid_follow_leaves_cleanly(
    script: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    handle_file = tmp_path / "run.json"
    proc = script("exit-mid-follow", str(handle_file))
    assert _report(proc) == {"first": "one"}
    assert proc.stderr == ""  # no "Task was destroyed but it is pending", no traceback
    handle = sync.load_handle(handle_file)
    assert handle.state is RunState.RUNNING  # exiting did not cancel the run
    handle.cancel()


# -- inside a running event loop (a notebook cell without await) ------------------------


def test_the_facade_works_inside_a_running_asyncio_loop() -> None:
    async def cell() -> tuple[SyncRunHandle, tether.RunResult, list[str], tether.RunResult]:
        asyncio.get_running_loop()  # this thread runs a loop, as a notebook kernel's does
        handle = sync.submit(Job(name="cell", command="echo a; echo b"), backend="local")
        result = handle.wait(timeout=DEADLINE)
        old_name = tether.run_sync(Job(name="old", command="true"))
        return handle, result, list(handle.logs()), old_name

    handle, result, lines, old_name = asyncio.run(cell())
    assert result.state is RunState.SUCCEEDED and lines == ["a", "b"]
    assert old_name.state is RunState.SUCCEEDED
    # The handle lives on the facade's loop: the cell's loop is closed, it still works.
    assert handle.refresh() is RunState.SUCCEEDED


def test_the_facade_works_inside_a_running_trio_loop() -> None:
    async def cell() -> tether.RunResult:
        return sync.run(Job(name="t", command="echo trio"), backend=DummyConfig(duration=0.1))

    result = anyio.run(cell, backend="trio")
    assert result.state is RunState.SUCCEEDED


def test_an_async_handle_from_another_loop_can_be_wrapped() -> None:
    async def make() -> tether.RunHandle:
        return await LocalConfig().create().submit(Job(name="w", command="echo wrapped"))

    inner = anyio.run(make)  # made on a loop that has ended since
    handle = SyncRunHandle(inner)
    assert handle.aio is inner and SyncRunHandle(handle).aio is inner
    assert handle.wait(timeout=DEADLINE).state is RunState.SUCCEEDED
    assert list(handle.logs()) == ["wrapped"]
    assert repr(handle) == f"SyncRunHandle({inner!r})"


# -- dummy and inline backends -------------------------------------------------------------


def test_dummy_runs_through_the_facade(tmp_path: Path) -> None:
    slow = sync.submit(Job(name="slow", command="x"), backend=DummyConfig(duration=300))
    with pytest.raises(WaitTimeout, match="keeps going"):
        slow.wait(timeout=0.2)
    assert slow.refresh() is RunState.RUNNING and not slow.is_complete()
    saved = slow.save(tmp_path / "slow.json")
    slow.cancel()
    slow.cancel()  # idempotent
    assert slow.state is RunState.CANCELLED
    assert sync.load_handle(saved).state is RunState.CANCELLED

    failing = sync.submit(Job(name="f", command="x"), backend=DummyConfig(outcome="failed"))
    with pytest.raises(RunFailedError, match="FAILED") as caught:
        failing.result()
    assert caught.value.result.run_id == failing.run_id

    chatty = sync.submit(
        Job(name="c", command="x"), backend=DummyConfig(duration=0.5, stdout="one\ntwo\nthree\n")
    )
    assert list(chatty.logs(follow=True)) == ["one", "two", "three"]
    assert chatty.wait(timeout=DEADLINE).state is RunState.SUCCEEDED


def _square(x: int) -> int:
    return x * x


def _refuse(x: int) -> int:
    raise LookupError(f"no {x}")


def test_inline_calls_through_the_facade() -> None:
    assert sync.run(Call(_square, 7), backend=InlineConfig()).value == 49
    handle = sync.submit(Call(_refuse, 3), backend=InlineConfig(mode="threads", n_jobs=2))
    with pytest.raises(LookupError, match="no 3"):  # the Call's own exception, type kept
        handle.result()


def test_many_lines_arrive_in_order() -> None:
    text = "".join(f"line {i}\n" for i in range(5000))
    handle = sync.submit(Job(name="many", command="x"), backend=DummyConfig(stdout=text))
    handle.wait(timeout=DEADLINE)
    assert list(handle.logs()) == [f"line {i}" for i in range(5000)]
    lines = handle.logs()
    assert next(lines) == "line 0"
    lines.close()  # stopping early is fine


# -- threads -------------------------------------------------------------------------------


def test_many_threads_use_the_facade_at_once() -> None:
    shared = sync.submit(Job(name="shared", command="x"), backend=DummyConfig(duration=1.0))

    def work(i: int) -> tuple[str, RunState, RunState]:
        own = sync.run(Job(name=f"t{i}", command=f"echo {i}"), backend=LocalConfig())
        return own.run_id, own.state, shared.wait(timeout=DEADLINE).state

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(work, range(8)))
    assert len({run_id for run_id, _, _ in outcomes}) == 8
    assert all(own is RunState.SUCCEEDED and s is RunState.SUCCEEDED for _, own, s in outcomes)
    loop_threads = [t for t in threading.enumerate() if t.name == "tether-sync"]
    assert len(loop_threads) == 1 and loop_threads[0].daemon


def test_a_forked_child_gets_a_loop_of_its_own() -> None:
    code = """
import json, os
import tether
from tether import sync

job = tether.Job(name="f", command="x")
before = sync.run(job, backend=tether.DummyConfig()).state.value
pid = os.fork()
if pid == 0:  # the parent's loop thread does not exist here
    ok = sync.run(job, backend=tether.DummyConfig()).state is tether.RunState.SUCCEEDED
    os._exit(0 if ok else 1)
_, status = os.waitpid(pid, 0)
print(json.dumps({"before": before, "child": os.waitstatus_to_exitcode(status)}))
"""
    assert run_python(code) == {"before": "SUCCEEDED", "child": 0}


def test_a_call_from_the_facades_own_loop_thread_is_refused() -> None:
    handle = sync.submit(Job(name="d", command="x"), backend=DummyConfig())
    portal = sync._LOOP.portal("test")  # run a plain function on the loop's thread
    with pytest.raises(sync.DeadlockError, match=r"own event-loop thread.*await the async"):
        portal.call(handle.refresh)
    assert isinstance(sync.DeadlockError("x"), tether.TetherError)


# -- bad input ----------------------------------------------------------------------------------


def test_bad_arguments_fail_with_one_line_that_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ArgumentTypeError, match=r"sync.submit\(\): job must be a tether.Job"):
        sync.submit("echo hi")  # type: ignore[arg-type]
    with pytest.raises(ArgumentTypeError, match=r"sync.run\(\): backend must be a Backend"):
        sync.run(Job(command="true"), backend=42)  # type: ignore[arg-type]
    with pytest.raises(ArgumentTypeError, match=r"handle must be a tether\.RunHandle"):
        SyncRunHandle("run.json")  # type: ignore[arg-type]
    handle = sync.submit(Job(name="b", command="x"), backend=DummyConfig())
    with pytest.raises(ConfigError, match=r"timeout must be a number of seconds >= 0"):
        handle.wait(timeout=-1)
    with pytest.raises(ArgumentTypeError, match="timeout must be a number of seconds or None"):
        handle.wait(timeout="5")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="stream must be 'stdout' or 'stderr'"):
        handle.logs("stdin")  # type: ignore[arg-type]
    with pytest.raises(ArgumentTypeError, match="path must be a str or a Path"):
        sync.load_handle(3)  # type: ignore[arg-type]
    with pytest.raises(tether.RecordError):
        sync.load_handle(tmp_path / "missing.json")


def test_a_base_exception_reaches_the_caller_and_the_loop_survives() -> None:
    async def leave() -> None:
        raise SystemExit(4)  # would tear down the portal's task group if not kept apart

    with pytest.raises(SystemExit):
        sync._call("test", leave)
    assert sync.run(Job(name="after", command="x"), backend="dummy").state is RunState.SUCCEEDED


# -- many runs, pipelines, ensembles and any coroutine ---------------------------------------


def test_wait_all_and_as_completed_without_await(tmp_path: Path) -> None:
    gate = tmp_path / "go"
    slow = sync.submit(
        Job(name="gated", command=f"while [ ! -e {gate} ]; do sleep 0.05; done; echo late"),
        backend=LocalConfig(runs_dir=tmp_path / "runs"),
    )
    quick = sync.submit(Job(name="quick", command="x"), backend=DummyConfig(duration=0.1))
    done, pending = sync.wait_all([slow, quick.aio], return_when="FIRST_COMPLETED")
    assert done == {quick.aio} and pending == {slow}  # the very objects given, sync or not
    order = []
    for result in sync.as_completed([slow, quick]):
        order.append(result.run_id)
        if len(order) == 1:
            gate.touch()  # the slow run may end only after the quick one was yielded
    assert order == [quick.run_id, slow.run_id]
    done, pending = sync.wait_all([slow], timeout=0)
    assert done == {slow} and not pending


def test_leaving_as_completed_early_leaves_the_runs_going(tmp_path: Path) -> None:
    runs = [
        sync.submit(Job(name=f"r{i}", command="x"), backend=DummyConfig(duration=d))
        for i, d in enumerate((0.1, 1.0))
    ]
    for result in sync.as_completed(runs):
        assert result.run_id == runs[0].run_id
        break
    assert runs[1].wait(timeout=DEADLINE).state is RunState.SUCCEEDED


def test_pipelines_ensembles_and_calls_run_sync_inside_a_running_loop() -> None:
    async def cell() -> tuple[object, list[int], list[int]]:
        asyncio.get_running_loop()  # a notebook cell without await
        step = tether.Step("sq", Call(_square, 4))
        pipeline = tether.Pipeline([step], name="in-a-cell", backend=InlineConfig())
        mapped = sync.call(tether.map_calls, _square, [1, 2, 3], backend=InlineConfig())
        ensemble = tether.Ensemble(_square_seed, 3, seed=7, seed_as="int").run_sync(InlineConfig())
        return pipeline.run_sync().value("sq"), mapped, ensemble

    value, mapped, ensemble = asyncio.run(cell())
    assert value == 16 and mapped == [1, 4, 9]
    again = tether.Ensemble(_square_seed, 3, seed=7, seed_as="int").run_sync(InlineConfig())
    assert ensemble == again
    with pytest.raises(ArgumentTypeError, match="coroutine function"):
        sync.call(42)  # type: ignore[arg-type]


def _square_seed(seed: int) -> int:
    return (seed % 1000) ** 2
