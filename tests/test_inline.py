"""The inline backend: Call jobs in this process's threads or in worker processes.

Pools are shared per process by (mode, workers, cancel_grace, capture_output); tests
that leave a pool thread busy (a call blocked in C) give their backend a cancel_grace
of its own, so no other test queues behind it.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

import tether
from tether import (
    Call,
    ConfigError,
    InlineConfig,
    InlineRunHandle,
    Job,
    RunFailedError,
    RunState,
)
from tether.call import RemoteTraceback

from . import calls_support as cs
from .conftest import run_python
from .services import cancel_from_a_cancelled_caller

pytestmark = pytest.mark.anyio

ROOT = str(Path(__file__).resolve().parents[1])
MODES = ["sequential", "threads", "processes"]

_graces = itertools.count()


def fresh_grace(base: float = 0.5) -> float:
    """A cancel_grace no other test uses: a pool of this test's own."""
    return base + next(_graces) / 1000


def inline(mode: str, **fields: Any) -> tether.InlineBackend:
    if mode != "sequential":
        fields.setdefault("n_jobs", 2)
    return InlineConfig(mode=mode, **fields).create()  # type: ignore[arg-type]


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def wait_until_running(handle: tether.RunHandle, limit: float = 10) -> None:
    with anyio.fail_after(limit):
        while await handle.refresh() is not RunState.RUNNING:  # noqa: ASYNC110 (polls a run)
            await anyio.sleep(0.01)


# -- results ----------------------------------------------------------------------------


async def test_values(mode: str) -> None:
    backend = inline(mode)
    handles = [
        await backend.submit(Call(cs.square, 7)),
        await backend.submit(Call("tests.calls_support:add", 1, b=2, c=3)),
        await backend.submit(Call(cs.echo, [1, 2], key={"a": None})),
        await backend.submit(Call(lambda x: x * 2, 21)),
    ]
    assert all(isinstance(h, InlineRunHandle) for h in handles)
    results = [await h.wait(30) for h in handles]
    assert [r.value for r in results] == [49, 6, (([1, 2],), {"key": {"a": None}}), 42]
    for result in results:
        assert result.state is RunState.SUCCEEDED and result.exit_code == 0
        assert result.error is None and result.exception is None
        assert result.started_at is not None and result.ended_at is not None
        assert result.started_at <= result.ended_at
    assert (await handles[0].result()).value == 49
    assert handles[0].run_dir is None


async def test_exceptions(mode: str) -> None:
    handle = await inline(mode).submit(Call(cs.fail, "boom"))
    result = await handle.wait(30)
    assert result.state is RunState.FAILED and result.exit_code is None
    assert result.error == "ValueError: boom"
    assert type(result.exception) is ValueError and result.exception.args == ("boom",)
    assert result.traceback is not None
    assert "in fail" in result.traceback and "raise ValueError(message)" in result.traceback
    assert "_inline_pool.py" not in result.traceback and "worker.py" not in result.traceback
    if mode == "processes":
        assert isinstance(result.exception.__cause__, RemoteTraceback)
        assert result.exception.__cause__.text == result.traceback
    with pytest.raises(ValueError, match=r"^boom$") as caught:
        await handle.result()
    assert caught.value is result.exception


async def test_exception_naming_is_the_same_in_every_mode(mode: str) -> None:
    result = await (await inline(mode).submit(Call(cs.raise_custom, "mine"))).wait(30)
    assert result.error == "tests.calls_support.CustomError: mine"
    assert type(result.exception) is cs.CustomError


async def test_sys_exit(mode: str) -> None:
    handle = await inline(mode).submit(Call(cs.exit_with, 3))
    result = await handle.wait(30)
    assert (result.state, result.exit_code) == (RunState.FAILED, 3)
    assert result.error == "the call exited with code 3" and result.exception is None
    with pytest.raises(RunFailedError, match="exited with code 3"):
        await handle.result()
    clean = await (await inline(mode).submit(Call(cs.exit_with, 0))).wait(30)
    assert clean.state is RunState.SUCCEEDED and clean.value is None


async def test_exception_class_unknown_here_becomes_call_error_in_processes() -> None:
    result = await (await inline("processes").submit(Call(cs.raise_worker_only))).wait(30)
    assert isinstance(result.exception, tether.CallError)
    assert result.exception.type_name == "tether_worker_only.WorkerOnlyError"


async def test_unpicklable_things_in_processes_mode() -> None:
    backend = inline("processes")
    with pytest.raises(ConfigError, match="its arguments cannot be pickled"):
        await backend.submit(Call(cs.echo, threading.Lock()))
    result = await (await backend.submit(Call(cs.unpicklable_value))).wait(30)
    assert result.state is RunState.FAILED
    assert "the call's return value cannot be pickled" in (result.error or "")


@pytest.mark.parametrize("mode", ["sequential", "threads"])
async def test_in_process_modes_need_no_pickling(mode: str) -> None:
    lock = threading.Lock()
    result = await (await inline(mode).submit(Call(cs.echo, lock))).wait(30)
    assert result.value == ((lock,), {})
    made = await (await inline(mode).submit(Call(cs.unpicklable_value))).wait(30)
    assert made.ok and hasattr(made.value, "acquire")


@pytest.mark.parametrize("mode", ["sequential", "threads"])
async def test_saving_an_unpicklable_in_process_call(tmp_path: Path, mode: str) -> None:
    lock = threading.Lock()
    handle = await inline(mode).submit(Call(cs.echo, lock))
    path = await handle.save(tmp_path / "unpicklable.json")
    record = json.loads(path.read_text())
    assert record["job"]["target"] == "tests.calls_support:echo"
    assert record["job"].get("digest") is None  # no pickle, so no digest
    again = await tether.load_handle(path)
    assert (await again.wait(10)).value == ((lock,), {})


THREAD_RAISES_BASE_EXCEPTION = """
import json, sys, anyio
sys.path.insert(0, sys.argv[1])
import threading
threading.excepthook = lambda args: None  # the pool thread's death is not the point
from tether import Call, InlineConfig, WaitTimeout
from tests.calls_support import raise_base, square

async def main():
    backend = InlineConfig(mode="sequential").create()
    states, errors = [], []
    for call in (Call(raise_base), Call(square, 3)):
        handle = await backend.submit(call)
        try:
            result = await handle.wait(3)
            states.append(result.state.value)
            errors.append(result.error)
        except WaitTimeout:
            states.append("hung")
    print(json.dumps({"states": states, "error": errors[0] if errors else None}))

anyio.run(main)
"""


def test_base_exception_in_a_thread_ends_the_run_and_keeps_the_pool() -> None:
    """A BaseException that is not an Exception (like KeyboardInterrupt) fails the run;
    it must not kill the pool thread (in a fresh process: a regression would hang)."""
    seen = run_python(THREAD_RAISES_BASE_EXCEPTION, ROOT)
    assert seen["states"] == ["FAILED", "SUCCEEDED"]
    assert seen["error"] == "tests.calls_support.Halt: halt"


# -- output -----------------------------------------------------------------------------


async def test_logs_and_read_stdout(mode: str) -> None:
    handle = await inline(mode).submit(Call(cs.printer, 3))
    result = await handle.wait(30)
    assert result.value == 3
    assert [line async for line in handle.logs()] == ["line 0", "line 1", "line 2"]
    assert [line async for line in handle.logs("stderr")] == ["to stderr"]
    assert await result.read_stdout() == "line 0\nline 1\nline 2\n"
    assert await result.read_stderr() == "to stderr\n"
    with pytest.raises(ValueError):
        [line async for line in handle.logs("bogus")]  # type: ignore[arg-type]


async def test_logs_follow(mode: str) -> None:
    handle = await inline(mode).submit(Call(cs.printer, 5, 0.05))
    with anyio.fail_after(20):
        lines = [line async for line in handle.logs(follow=True)]
    assert lines == [f"line {i}" for i in range(5)]
    assert (await handle.wait(10)).ok


async def test_logs_follow_sees_lines_before_the_end() -> None:
    handle = await inline("threads", cancel_grace=fresh_grace()).submit(Call(cs.printer, 4, 0.3))
    seen: list[tuple[str, bool]] = []
    with anyio.fail_after(20):
        async for line in handle.logs(follow=True):
            seen.append((line, (await handle.refresh()).is_terminal))
    assert [line for line, _ in seen] == [f"line {i}" for i in range(4)]
    assert not seen[0][1]  # the first line came while the call still ran


async def test_concurrent_calls_keep_their_output_apart(mode: str) -> None:
    backend = inline(mode)
    handles = [await backend.submit(Call(cs.printer, n, 0.01)) for n in (2, 4, 3, 5)]
    for n, handle in zip((2, 4, 3, 5), handles, strict=True):
        await handle.wait(30)
        assert [line async for line in handle.logs()] == [f"line {i}" for i in range(n)]


async def test_capture_output_false_keeps_no_logs(mode: str) -> None:
    handle = await inline(mode, capture_output=False).submit(Call(cs.square, 3))
    result = await handle.wait(30)
    assert result.value == 9
    assert [line async for line in handle.logs()] == []
    assert await result.read_stdout() == ""


# -- cancel and timeout --------------------------------------------------------------------


async def test_cancel_queued_and_running_calls(mode: str) -> None:
    backend = inline(mode, n_jobs=None if mode == "sequential" else 1, cancel_grace=fresh_grace())
    running = await backend.submit(Call(cs.python_busy, 30))
    queued = await backend.submit(Call(cs.square, 2))
    await wait_until_running(running)
    assert await queued.refresh() is RunState.PENDING

    began = time.monotonic()
    await queued.cancel()
    assert queued.state is RunState.CANCELLED
    assert time.monotonic() - began < 1
    queued_result = await queued.wait(1)
    assert queued_result.error == "cancelled" and queued_result.started_at is None
    assert await running.refresh() is RunState.RUNNING

    began = time.monotonic()
    await running.cancel()
    result = await running.wait(1)
    assert time.monotonic() - began < 3
    assert result.state is RunState.CANCELLED and result.error == "cancelled"
    with pytest.raises(RunFailedError, match="CANCELLED"):
        await running.result()

    # The slot is free again.
    after = await backend.submit(Call(cs.square, 5))
    assert (await after.wait(10)).value == 25


async def test_cancel_after_the_end_changes_nothing(mode: str) -> None:
    handle = await inline(mode).submit(Call(cs.square, 4))
    await handle.wait(30)
    await handle.cancel()
    assert handle.state is RunState.SUCCEEDED and (await handle.wait()).value == 16


async def test_cancelling_the_waiter_does_not_cancel_the_run(mode: str) -> None:
    handle = await inline(mode).submit(Call(cs.python_busy, 0.5))
    with anyio.move_on_after(0.1):
        await handle.wait()
    assert not handle.state.is_terminal
    assert (await handle.wait(10)).value == "finished"


async def test_walltime_times_out(mode: str) -> None:
    backend = inline(mode, cancel_grace=fresh_grace())
    call = Call(cs.python_busy, 30).options(resources={"walltime": 0.3})
    began = time.monotonic()
    result = await (await backend.submit(call)).wait(10)
    assert time.monotonic() - began < 3
    assert result.state is RunState.TIMED_OUT and result.error == "timed out after 0.3s"
    after = await backend.submit(Call(cs.square, 6))
    assert (await after.wait(10)).value == 36


async def test_walltime_counts_from_the_call_start(mode: str) -> None:
    backend = inline(mode, n_jobs=None if mode == "sequential" else 1, cancel_grace=fresh_grace())
    first = await backend.submit(Call(cs.python_busy, 0.8))
    second = await backend.submit(Call(cs.square, 3).options(resources={"walltime": 0.5}))
    assert (await first.wait(10)).value == "finished"
    result = await second.wait(10)
    assert result.state is RunState.SUCCEEDED and result.value == 9


async def test_cancels_racing_the_end_of_calls(mode: str) -> None:
    """Cancels landing just before, during and after short calls: every run ends once,
    and no stray stop reaches the pool itself (its slots keep working).

    On a busy machine a whole round of calls can end before its first cancel lands, so
    rounds repeat (at most five) until one of them has cancelled a run."""
    backend = inline(mode, cancel_grace=fresh_grace(0.2))

    async def cancel_later(i: int, handle: tether.RunHandle) -> None:
        await anyio.sleep((i % 30) * 0.005)
        await handle.cancel()

    states: set[RunState] = set()
    for _ in range(5):
        handles = [await backend.submit(Call(cs.python_busy, 0.001)) for _ in range(150)]
        with anyio.fail_after(30):
            async with anyio.create_task_group() as group:
                for i, handle in enumerate(handles):
                    group.start_soon(cancel_later, i, handle)
            results = [await h.wait() for h in handles]
        for result in results:
            states.add(result.state)
            if result.state is RunState.SUCCEEDED:
                assert result.value == "finished"
            else:
                assert result.state is RunState.CANCELLED and result.error == "cancelled"
        if RunState.CANCELLED in states:
            break
    assert RunState.CANCELLED in states
    after = [await backend.submit(Call(cs.square, i)) for i in range(4)]
    assert [(await h.wait(10)).value for h in after] == [0, 1, 4, 9]


@pytest.mark.parametrize("mode", ["sequential", "threads"])
async def test_call_blocked_in_c_is_recorded_cancelled_and_runs_on(mode: str) -> None:
    backend = inline(mode, cancel_grace=fresh_grace())
    handle = await backend.submit(Call(cs.sleep_then, 5, "late"))
    await wait_until_running(handle)
    began = time.monotonic()
    await handle.cancel()
    result = await handle.wait(1)
    assert time.monotonic() - began < 2.5
    assert result.state is RunState.CANCELLED
    assert result.error is not None and result.error.startswith("cancelled; ")
    assert "runs on in its thread" in result.error and "mode='processes'" in result.error
    assert result.value is None


async def test_call_blocked_in_c_times_out_after_the_grace() -> None:
    backend = inline("threads", cancel_grace=fresh_grace(0.3))
    call = Call(cs.sleep_then, 4).options(resources={"walltime": 0.3})
    began = time.monotonic()
    result = await (await backend.submit(call)).wait(10)
    assert time.monotonic() - began < 2.5
    assert result.state is RunState.TIMED_OUT
    assert result.error is not None
    assert result.error.startswith("timed out after 0.3s; the call did not stop")


async def test_processes_cancel_a_call_blocked_in_c() -> None:
    backend = inline("processes", n_jobs=1, cancel_grace=fresh_grace())
    handle = await backend.submit(Call(cs.sleep_then, 30))
    await wait_until_running(handle)
    began = time.monotonic()
    await handle.cancel()
    assert handle.state is RunState.CANCELLED
    assert (await handle.wait()).error == "cancelled"
    assert time.monotonic() - began < 2
    assert (await (await backend.submit(Call(cs.square, 3))).wait(10)).value == 9


# -- processes: workers and environment ---------------------------------------------------


@pytest.mark.parametrize(
    ("function", "how"),
    [(cs.die, "exit code 7"), (cs.kill_self, "signal SIGKILL")],
)
async def test_worker_death_fails_the_call_and_the_pool_goes_on(function: Any, how: str) -> None:
    backend = inline("processes", n_jobs=1, cancel_grace=fresh_grace())
    before = await (await backend.submit(Call(cs.pid))).wait(10)
    dying = await backend.submit(Call(function))
    queued = await backend.submit(Call(cs.square, 4))  # in the same worker's pipe
    result = await dying.wait(10)
    assert result.state is RunState.FAILED
    assert result.error == f"the worker process died ({how})"
    assert (await queued.wait(10)).value == 16
    after = await (await backend.submit(Call(cs.pid))).wait(10)
    assert after.value != before.value and after.value != os.getpid()


async def test_processes_mode_calls_run_in_other_processes() -> None:
    backend = inline("processes", n_jobs=2)
    pids = {(await (await backend.submit(Call(cs.pid))).wait(10)).value for _ in range(4)}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2
    in_threads = await (await inline("threads").submit(Call(cs.pid))).wait(10)
    assert in_threads.value == os.getpid()


async def test_processes_env_is_seen_and_not_leaked() -> None:
    backend = inline("processes", n_jobs=1, env_vars={"TETHER_T_CFG": "config"})
    job_env = Call(cs.getenv, "TETHER_T_JOB").options(env={"TETHER_T_JOB": "job"})
    assert (await (await backend.submit(job_env)).wait(10)).value == "job"
    assert (await (await backend.submit(Call(cs.getenv, "TETHER_T_JOB"))).wait(10)).value is None
    assert (await (await backend.submit(Call(cs.getenv, "TETHER_T_CFG"))).wait(10)).value == (
        "config"
    )
    overridden = Call(cs.getenv, "TETHER_T_CFG").options(env={"TETHER_T_CFG": "job"})
    assert (await (await backend.submit(overridden)).wait(10)).value == "job"
    assert (await (await backend.submit(Call(cs.getenv, "TETHER_T_CFG"))).wait(10)).value == (
        "config"
    )
    # Another backend on the same pool, without env_vars: nothing left over.
    plain = inline("processes", n_jobs=1)
    assert (await (await plain.submit(Call(cs.getenv, "TETHER_T_CFG"))).wait(10)).value is None
    assert "TETHER_T_JOB" not in os.environ and "TETHER_T_CFG" not in os.environ


async def test_processes_workdir_is_applied_and_restored(tmp_path: Path) -> None:
    job_dir, config_dir = tmp_path / "job", tmp_path / "config"
    job_dir.mkdir()
    config_dir.mkdir()
    plain = inline("processes", n_jobs=1)
    start = (await (await plain.submit(Call(os.getcwd))).wait(10)).value
    call = Call(os.getcwd).options(workdir=job_dir)
    assert (await (await plain.submit(call)).wait(10)).value == str(job_dir.resolve())
    assert (await (await plain.submit(Call(os.getcwd))).wait(10)).value == start
    configured = inline("processes", n_jobs=1, working_dir=config_dir)
    result = await (await configured.submit(Call(os.getcwd))).wait(10)
    assert result.value == str(config_dir.resolve())
    assert (await (await configured.submit(call)).wait(10)).value == str(job_dir.resolve())
    assert (await (await plain.submit(Call(os.getcwd))).wait(10)).value == start


# -- configuration -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"mode": "threads", "n_jobs": 0}, "n_jobs must be a positive number"),
        ({"mode": "processes", "n_jobs": -10_000}, "n_jobs must be a positive number"),
        ({"mode": "sequential", "n_jobs": 4}, "sequential mode runs one call at a time"),
        ({"mode": "threads", "env_vars": {"A": "1"}}, "env_vars and working_dir need"),
        ({"mode": "sequential", "env_vars": {"A": "1"}}, "env_vars and working_dir need"),
        ({"mode": "fibers"}, "mode"),
        ({"cancel_grace": -1}, "cancel_grace"),
        ({"timeout": 5}, "timeout"),
    ],
)
def test_config_validation_errors(fields: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        InlineConfig(**fields)


def test_config_working_dir_refused_in_threads_mode(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="use mode: processes"):
        InlineConfig(mode="threads", working_dir=tmp_path)


def test_config_workers() -> None:
    cores = os.cpu_count() or 1
    assert InlineConfig().workers == 1
    assert InlineConfig(mode="sequential", n_jobs=1).workers == 1
    assert InlineConfig(mode="threads").workers == cores
    assert InlineConfig(mode="processes", n_jobs=-1).workers == cores
    assert InlineConfig(mode="threads", n_jobs=-2).workers == max(1, cores - 1)
    assert InlineConfig(mode="threads", n_jobs=7).workers == 7
    assert InlineConfig(mode="processes", env_vars={"A": "1"}).env_vars == {"A": "1"}


async def test_jobs_the_backend_refuses(tmp_path: Path) -> None:
    data = tmp_path / "in.txt"
    data.write_text("x")
    for mode in MODES:
        backend = inline(mode)
        with pytest.raises(ConfigError, match="is a command; the inline backend runs Call jobs"):
            await backend.submit(Job(command="true"))
        with pytest.raises(ConfigError, match="has inputs or outputs"):
            await backend.submit(Call(cs.square, 1).options(inputs=[data]))
        with pytest.raises(ConfigError, match="has inputs or outputs"):
            await backend.submit(Call(cs.square, 1).options(outputs=["*.txt"]))
    for mode in ("sequential", "threads"):
        with pytest.raises(ConfigError, match=r"sets env or workdir.*use mode='processes'"):
            await inline(mode).submit(Call(cs.square, 1).options(env={"A": "1"}))
        with pytest.raises(ConfigError, match="sets env or workdir"):
            await inline(mode).submit(Call(cs.square, 1).options(workdir=tmp_path))
    with pytest.raises(ConfigError, match="Cannot import call target"):
        await inline("threads").submit(Call("tests.no_such_module_xyz:f"))


async def test_unimportable_target_fails_the_run_in_processes_mode() -> None:
    result = await (await inline("processes").submit(Call("tests.no_such_xyz:f"))).wait(10)
    assert result.state is RunState.FAILED
    assert (result.error or "").startswith("could not load the call: ModuleNotFoundError")


# -- handles: reload, many at once, resources ------------------------------------------


async def test_same_process_reload_reattaches(tmp_path: Path, mode: str) -> None:
    handle = await inline(mode).submit(Call(cs.sleep_then, 0.5, "late"))
    path = await handle.save(tmp_path / "inline.json")
    record = json.loads(path.read_text())
    assert record["backend"] == "inline" and record["data"]["pid"] == os.getpid()
    assert record["data"]["mode"] == mode
    again = await tether.load_handle(path)
    assert isinstance(again, InlineRunHandle) and again.run_id == handle.run_id
    assert isinstance(again.job, Call) and again.job.target == "tests.calls_support:sleep_then"
    result = await again.wait(10)  # a handle that did not re-attach would be LOST
    assert (result.state, result.value) == (RunState.SUCCEEDED, "late")
    assert result.run_id == handle.run_id
    assert (await handle.wait(10)).value == "late"


async def test_same_process_reload_can_cancel(tmp_path: Path) -> None:
    handle = await inline("threads", cancel_grace=fresh_grace()).submit(Call(cs.python_busy, 30))
    again = await tether.load_handle(await handle.save(tmp_path / "inline.json"))
    await wait_until_running(handle)
    await again.cancel()
    assert (await handle.wait(5)).state is RunState.CANCELLED


LOAD_INLINE = """
import json, sys, anyio, tether
sys.path.insert(0, sys.argv[2])
async def main():
    handle = await tether.load_handle(sys.argv[1])
    result = await handle.wait(10)
    print(json.dumps({"state": result.state.value, "error": result.error,
                      "target": handle.job.target, "has_arguments": handle.job.has_arguments,
                      "logs": [line async for line in handle.logs()]}))
anyio.run(main)
"""


async def test_fresh_process_reload_is_lost(tmp_path: Path, mode: str) -> None:
    handle = await inline(mode).submit(Call(cs.printer, 1))
    path = await handle.save(tmp_path / "inline.json")
    seen = await anyio.to_thread.run_sync(run_python, LOAD_INLINE, str(path), ROOT)
    assert seen["state"] == "LOST"
    assert (
        f"inline runs live in the process that started them (process {os.getpid()})"
        in (seen["error"])
    )
    assert seen["target"] == "tests.calls_support:printer" and seen["has_arguments"] is False
    assert seen["logs"] == []
    assert (await handle.wait(10)).ok  # here it is still fine


async def test_many_concurrent_handles(mode: str) -> None:
    backend = inline(mode)
    handles = [await backend.submit(Call(cs.square, i)) for i in range(500)]
    values: dict[int, Any] = {}

    async def wait(i: int, handle: tether.RunHandle) -> None:
        values[i] = (await handle.wait(60)).value

    with anyio.fail_after(60):
        async with anyio.create_task_group() as group:
            for i, handle in enumerate(handles):
                group.start_soon(wait, i, handle)
    assert values == {i: i * i for i in range(500)}
    assert len({h.run_id for h in handles}) == 500


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_no_leaked_file_descriptors(mode: str) -> None:
    backend = inline(mode)
    await (await backend.submit(Call(cs.square, 0))).wait(10)  # the pool is up
    before = open_fds()
    for i in range(150):
        handle = await backend.submit(Call(cs.square, i))
        assert (await handle.wait(10)).value == i * i
    # Waits that time out and waits cancelled from outside close their eventfd too.
    slow = await backend.submit(Call(cs.python_busy, 0.3))
    for _ in range(5):
        with pytest.raises(tether.WaitTimeout):
            await slow.wait(0.01)
    async with anyio.create_task_group() as group:
        for _ in range(20):
            group.start_soon(slow.wait)
    assert open_fds() <= before + 1, os.listdir("/proc/self/fd")


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # trio's scopes are shielded already
@pytest.mark.parametrize("how", ["task_cancel", "wait_for"])
async def test_cancel_finishes_when_its_caller_is_cancelled(tmp_path: Path, how: str) -> None:
    """asyncio's own cancels of the task awaiting cancel() (task.cancel, wait_for) do not
    cut it short: the TERM-ignoring worker is killed and the run is CANCELLED."""
    backend = inline("processes", n_jobs=1, cancel_grace=fresh_grace(0.3))
    pidfile = tmp_path / "pid"
    handle = await backend.submit(Call(cs.stubborn_sleep, str(pidfile), 60))
    with anyio.fail_after(60):
        while not pidfile.exists() or not pidfile.read_text():  # noqa: ASYNC110
            await anyio.sleep(0.02)  # a file the worker writes
    pid = int(pidfile.read_text())
    await cancel_from_a_cancelled_caller(handle, how)
    assert handle.state is RunState.CANCELLED
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
