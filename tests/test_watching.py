"""Watching many runs: as_completed, wait_all and watch over local, dummy and inline
handles at once, under asyncio and trio.

Runs are held back by real gates (a threading.Event an inline call waits on, a file a
local command waits for), so the order of events follows from what the test releases,
never from timing. Every test releases its gates in ``finally``: a blocked pool thread
must not outlive its test.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

import tether
from tether import (
    ArgumentTypeError,
    BackendError,
    Call,
    ConfigError,
    DummyConfig,
    DummyRunHandle,
    InlineConfig,
    InlineRunHandle,
    Job,
    LocalConfig,
    RunHandle,
    RunResult,
    RunState,
    StateChange,
)

pytestmark = pytest.mark.anyio

DEADLINE = 60  # seconds: generous, for a busy machine

_graces = itertools.count()


def blocked(gate: threading.Event, value: Any = "released") -> Any:
    """An inline call that runs until its test opens the gate."""
    gate.wait(DEADLINE)
    return value


def quick(value: Any) -> Any:
    return value


class Runs:
    """Backends of all three kinds in one test folder, and the gates that hold runs."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.gates: list[threading.Event] = []
        self.flags: list[Path] = []
        # A sequential pool of this test's own: a call queued behind a blocked one
        # stays PENDING until the test releases it.
        grace = 3.0 + next(_graces) / 1000
        self.inline = InlineConfig(cancel_grace=grace).create()
        self.local = LocalConfig(runs_dir=tmp_path / "runs").create()

    def dummy(self, **fields: Any) -> tether.DummyBackend:
        return DummyConfig(runs_dir=self.tmp / "runs", **fields).create()

    async def held_call(self, value: Any = "released") -> tuple[InlineRunHandle, threading.Event]:
        gate = threading.Event()
        self.gates.append(gate)
        return await self.inline.submit(Call(blocked, gate, value)), gate

    async def held_command(self, name: str = "held") -> tuple[RunHandle, Path]:
        flag = self.tmp / f"{name}.go"
        self.flags.append(flag)
        job = Job(name=name, command=f"while [ ! -e '{flag}' ]; do sleep 0.05; done; echo {name}")
        return await self.local.submit(job), flag

    def release_all(self) -> None:
        for gate in self.gates:
            gate.set()
        for flag in self.flags:
            flag.touch()


@pytest.fixture
def runs(tmp_path: Path) -> Iterator[Runs]:
    made = Runs(tmp_path)
    try:
        yield made
    finally:
        made.release_all()


def live_tasks(anyio_backend: str) -> int:
    """Tasks alive in this event loop now."""
    if anyio_backend == "trio":
        import trio

        return trio.lowlevel.current_statistics().tasks_living
    return len(asyncio.all_tasks())


async def eventually(condition: Callable[[], bool], what: str) -> None:
    """Wait (generously) until ``condition()`` holds."""
    with anyio.move_on_after(DEADLINE):
        while not condition():  # noqa: ASYNC110 (a condition of several parts)
            await anyio.sleep(0.02)
        return
    raise AssertionError(f"still not true after {DEADLINE}s: {what}")


async def all_finish(handles: list[RunHandle]) -> list[RunResult]:
    """Every run reaches its own end: the watcher that left never cancelled one."""
    with anyio.fail_after(DEADLINE):
        results = [await handle.wait() for handle in handles]
    assert [r.state for r in results] == [RunState.SUCCEEDED] * len(handles)
    return results


# -- as_completed -------------------------------------------------------------------------


async def test_as_completed_yields_in_completion_order_over_three_backends(runs: Runs) -> None:
    first = await runs.dummy().submit(Job(name="first"))
    second, gate = await runs.held_call("second")
    third, flag = await runs.held_command("third")
    seen: list[str] = []
    with anyio.fail_after(DEADLINE):
        async for result in tether.as_completed([third, second, first]):
            seen.append(result.run_id)
            assert result.ok, result
            if result.run_id == first.run_id:
                gate.set()  # only now may the inline call end
            elif result.run_id == second.run_id:
                assert result.value == "second"
                flag.touch()  # only now may the local command end
    assert seen == [first.run_id, second.run_id, third.run_id]


async def test_as_completed_many_inline_runs_refresh_once_each(
    runs: Runs, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: dict[str, int] = {}
    original = InlineRunHandle.refresh

    async def counted(self: InlineRunHandle) -> RunState:
        calls[self.run_id] = calls.get(self.run_id, 0) + 1
        return await original(self)

    monkeypatch.setattr(InlineRunHandle, "refresh", counted)
    head, gate = await runs.held_call("head")
    queued = [await runs.inline.submit(Call(quick, i)) for i in range(300)]
    values: list[Any] = []
    with anyio.fail_after(DEADLINE):
        async with tether.as_completed([head, *queued]) as results:
            await anyio.sleep(0.5)  # a window in which a poll loop would show
            assert calls == {}, "as_completed refreshed handles while their runs were held"
            gate.set()
            async for result in results:
                values.append(result.value)
    # Runs that end within one turn of the event loop come in the order it wakes them.
    assert sorted(values, key=str) == sorted(["head", *range(300)], key=str)
    # Each handle was refreshed once, by its own wait() as its run ended.
    assert sorted(calls.values()) == [1] * 301


# -- wait_all -----------------------------------------------------------------------------


async def test_wait_all_all_completed_over_three_backends(runs: Runs) -> None:
    dummy = await runs.dummy(duration=0.2).submit(Job())
    call = await runs.inline.submit(Call(quick, 5))
    command = await runs.local.submit(Job(command="echo hi"))
    with anyio.fail_after(DEADLINE):
        done, pending = await tether.wait_all([dummy, call, command])
    assert done == {dummy, call, command} and pending == set()
    assert all(h.last_result is not None and h.last_result.ok for h in done)
    assert call.last_result is not None and call.last_result.value == 5


async def test_wait_all_first_completed_leaves_the_rest_running(runs: Runs) -> None:
    quick_one = await runs.dummy().submit(Job())
    call, _ = await runs.held_call()
    command, _ = await runs.held_command()
    with anyio.fail_after(DEADLINE):
        done, pending = await tether.wait_all(
            [call, command, quick_one], return_when=tether.FIRST_COMPLETED
        )
    assert done == {quick_one} and pending == {call, command}
    runs.release_all()
    await all_finish([call, command])


async def test_wait_all_first_failed(runs: Runs) -> None:
    failing = await runs.dummy(duration=0.2, outcome="failed").submit(Job())
    call, _ = await runs.held_call()
    command, _ = await runs.held_command()
    with anyio.fail_after(DEADLINE):
        done, pending = await tether.wait_all(
            [call, failing, command], return_when=tether.FIRST_FAILED
        )
    assert done == {failing} and pending == {call, command}
    assert failing.last_result is not None and failing.last_result.state is RunState.FAILED
    # With no failure FIRST_FAILED waits for every run, as ALL_COMPLETED does.
    runs.release_all()
    more = [await runs.dummy(duration=0.2).submit(Job()), await runs.inline.submit(Call(quick, 1))]
    with anyio.fail_after(DEADLINE):
        done, pending = await tether.wait_all([call, command, *more], return_when="FIRST_FAILED")
    assert done == {call, command, *more} and pending == set()


async def test_wait_all_timeout_returns_and_cancels_nothing(runs: Runs) -> None:
    ended = await runs.dummy().submit(Job())
    call, _ = await runs.held_call()
    command, _ = await runs.held_command()
    with anyio.fail_after(DEADLINE):
        done, pending = await tether.wait_all([ended, call, command], timeout=1.5)
    assert done == {ended} and pending == {call, command}
    with anyio.fail_after(DEADLINE):
        done, pending = await tether.wait_all([call, command], timeout=0)
    assert done == set() and pending == {call, command}
    assert call.state is not RunState.CANCELLED and command.state is RunState.RUNNING
    runs.release_all()
    await all_finish([call, command])


# -- watch --------------------------------------------------------------------------------


async def test_watch_reports_every_change_over_three_backends(runs: Runs) -> None:
    first, gate1 = await runs.held_call("one")
    second, gate2 = await runs.held_call("two")  # queued behind the first: PENDING
    queued = await runs.dummy(queue_time=0.3, duration=2).submit(Job())
    command, flag = await runs.held_command()
    handles: list[RunHandle] = [first, second, queued, command]
    changes: dict[str, list[StateChange]] = {h.run_id: [] for h in handles}
    with anyio.fail_after(DEADLINE):
        async for change in tether.watch(handles, refresh_interval=0.1):
            changes[change.run_id].append(change)
            assert change.handle.run_id == change.run_id
            states = [(c.old_state, c.new_state) for c in changes[first.run_id]]
            if change.run_id in (first.run_id, queued.run_id) and (
                (RunState.PENDING, RunState.RUNNING) in states
                and changes[queued.run_id]
                and changes[queued.run_id][-1].is_terminal
            ):
                gate1.set()  # the first call started and the dummy run ended
            if change.run_id == second.run_id and change.new_state is RunState.RUNNING:
                gate2.set()
            if change.run_id == second.run_id and change.is_terminal:
                flag.touch()
    run, ok = RunState.RUNNING, RunState.SUCCEEDED
    pairs = {rid: [(c.old_state, c.new_state) for c in seen] for rid, seen in changes.items()}
    assert pairs[first.run_id] == [(RunState.PENDING, run), (run, ok)]
    assert pairs[second.run_id] == [(RunState.PENDING, run), (run, ok)]
    assert pairs[command.run_id] == [(run, ok)]  # a local run starts RUNNING
    assert pairs[queued.run_id][0][0] is RunState.PENDING and pairs[queued.run_id][-1][1] is ok
    for seen in changes.values():
        assert [c.new_state for c in seen[:-1]] == [c.old_state for c in seen[1:]]  # a chain
        assert [c.is_terminal for c in seen] == [False] * (len(seen) - 1) + [True]
        last = seen[-1]
        assert last.result is not None and last.result.run_id == last.run_id and last.result.ok
        assert [c.time for c in seen] == sorted(c.time for c in seen)
    assert changes[second.run_id][-1].result.value == "two"  # type: ignore[union-attr]
    assert all(not h._state_listeners for h in handles)


async def test_watch_refreshes_in_one_slow_round_not_per_handle(
    runs: Runs, monkeypatch: pytest.MonkeyPatch
) -> None:
    in_own_wait = contextvars.ContextVar("in_own_wait", default=False)
    outside: dict[int, int] = {}  # refreshes not made by a handle's own wait(), by handle

    def count_outside(cls: type[RunHandle]) -> None:
        refresh, wait_done = cls.refresh, cls._wait_done

        async def counted_refresh(self: RunHandle) -> RunState:
            if not in_own_wait.get():
                outside[id(self)] = outside.get(id(self), 0) + 1
            return await refresh(self)

        async def marked_wait(self: RunHandle) -> RunResult:
            in_own_wait.set(True)  # this task's context only
            return await wait_done(self)

        monkeypatch.setattr(cls, "refresh", counted_refresh)
        monkeypatch.setattr(cls, "_wait_done", marked_wait)

    count_outside(InlineRunHandle)
    count_outside(DummyRunHandle)
    head, _ = await runs.held_call()
    queued = [await runs.inline.submit(Call(quick, i)) for i in range(200)]
    dummies = [await runs.dummy(duration=30).submit(Job()) for _ in range(200)]
    for handle in dummies:
        await handle.refresh()  # RUNNING now: nothing for a watcher to refresh
    # A handle class whose wait() would report the start itself is never refreshed.
    last = queued[-1]
    reporting = _ReportsRunning(
        run_id=last.run_id, job=last.job, config=last.config, run=last._run, pid=last._pid
    )
    outside.clear()
    interval = 0.25
    started = anyio.current_time()
    watcher = tether.watch([head, *queued, reporting, *dummies], refresh_interval=interval)
    with anyio.fail_after(DEADLINE):
        async for change in watcher:
            if change.handle is head and change.new_state is RunState.RUNNING:
                break
        await anyio.sleep(1.0)  # a window in which a poll loop per handle would show
        elapsed = anyio.current_time() - started
        assert not any(outside.get(id(h)) for h in dummies), "running handles were polled"
        rounds = elapsed / interval + 2
        per_handle = [outside.get(id(h), 0) for h in queued]
        assert max(per_handle) <= rounds, (max(per_handle), rounds)
        assert min(per_handle) >= 1  # the queued handles are looked at, each once a round
        assert id(reporting) not in outside
    await watcher.aclose()
    for handle in dummies:
        await handle.cancel()


# -- leaving early never stops a run --------------------------------------------------------


async def test_breaking_out_cleans_up_and_the_runs_go_on(runs: Runs, anyio_backend: str) -> None:
    ended = await runs.dummy().submit(Job())
    call, _ = await runs.held_call()
    command, _ = await runs.held_command()
    dummy = await runs.dummy(duration=1.5).submit(Job())
    handles: list[RunHandle] = [ended, call, command, dummy]
    baseline = live_tasks(anyio_backend)
    with anyio.fail_after(DEADLINE):
        async for result in tether.as_completed(handles):
            assert result.run_id == ended.run_id
            break
        await eventually(lambda: live_tasks(anyio_backend) == baseline, "as_completed's tasks end")
        with pytest.raises(KeyError):
            async for _ in tether.as_completed(handles):
                raise KeyError("the consumer failed")
        await eventually(lambda: live_tasks(anyio_backend) == baseline, "tasks end after an error")
        async for change in tether.watch(handles):
            assert change.run_id == ended.run_id
            break
        await eventually(lambda: live_tasks(anyio_backend) == baseline, "watch's tasks end")
        assert all(not h._state_listeners for h in handles)
        async with tether.watch(handles) as changes:
            async for _ in changes:
                break
        assert live_tasks(anyio_backend) == baseline  # structured: gone with the block
    runs.release_all()
    await all_finish(handles)


async def test_cancelling_the_consumer_never_cancels_a_run(runs: Runs, anyio_backend: str) -> None:
    call, _ = await runs.held_call()
    command, _ = await runs.held_command()
    handles: list[RunHandle] = [call, command]
    baseline = live_tasks(anyio_backend)
    with anyio.move_on_after(0.3) as scope:
        async for _ in tether.as_completed(handles):
            raise AssertionError("no run may end while held")
    assert scope.cancelled_caught

    async def watcher(task_status: anyio.abc.TaskStatus[None]) -> None:
        async with tether.watch(handles, refresh_interval=0.05) as changes:
            task_status.started()
            async for _ in changes:
                pass

    async with anyio.create_task_group() as group:
        await group.start(watcher)
        await anyio.sleep(0.2)
        group.cancel_scope.cancel()
    with anyio.fail_after(DEADLINE):
        await eventually(lambda: live_tasks(anyio_backend) == baseline, "the watchers' tasks end")
    assert call.state is not RunState.CANCELLED and command.state is RunState.RUNNING
    runs.release_all()
    await all_finish(handles)


# -- defined behaviour at the edges ----------------------------------------------------------


async def test_empty_lists() -> None:
    assert [r async for r in tether.as_completed([])] == []
    assert [c async for c in tether.watch([])] == []
    for when in tether.ReturnWhen:
        assert await tether.wait_all([], return_when=when) == (set(), set())


async def test_duplicates_count_once(runs: Runs) -> None:
    dummy = await runs.dummy(duration=0.2).submit(Job())
    call = await runs.inline.submit(Call(quick, 1))
    with anyio.fail_after(DEADLINE):
        results = [r async for r in tether.as_completed([dummy, call, dummy, call])]
        assert sorted(r.run_id for r in results) == sorted([dummy.run_id, call.run_id])
        changes = [c async for c in tether.watch([call, call, dummy])]
        assert sorted(c.run_id for c in changes if c.is_terminal) == sorted(
            [dummy.run_id, call.run_id]
        )
        done, pending = await tether.wait_all([dummy, dummy, call])
    assert done == {dummy, call} and pending == set()


async def test_already_terminal_handles_come_first_at_once(runs: Runs) -> None:
    ok = await runs.dummy().submit(Job())
    failed = await runs.dummy(outcome="failed").submit(Job())
    for handle in (ok, failed):
        await handle.wait()
    call, _ = await runs.held_call()
    with anyio.fail_after(DEADLINE):
        iterator = tether.as_completed([failed, call, ok])
        first = [await iterator.__anext__(), await iterator.__anext__()]
        await iterator.aclose()
        assert [r.run_id for r in first] == [failed.run_id, ok.run_id]  # the order given
        async for change in tether.watch([call, ok]):
            assert (change.handle, change.old_state, change.new_state) == (
                ok,
                RunState.SUCCEEDED,
                RunState.SUCCEEDED,
            )
            assert change.result is ok.last_result
            break
        assert await tether.wait_all([call, ok], return_when="first_completed") == ({ok}, {call})
        assert await tether.wait_all([call, failed], return_when=tether.FIRST_FAILED) == (
            {failed},
            {call},
        )
    runs.release_all()
    await all_finish([call])


class _ReportsRunning(InlineRunHandle):
    """An inline handle that declares its wait() reports PENDING -> RUNNING itself."""

    _wait_reports_running = True


class _EngineGone(DummyRunHandle):
    """Fault injection: a handle whose backend's service fails while it is awaited."""

    async def _wait_done(self) -> RunResult:
        raise BackendError("the engine went away; start it again")


async def test_a_failing_wait_is_raised_to_the_consumer(runs: Runs) -> None:
    good = await runs.dummy(duration=0.2).submit(Job())
    real = await runs.dummy(duration=5).submit(Job())
    gone = _EngineGone._from_record(real.run_id, real.job, real.config, real._record_data())
    with anyio.fail_after(DEADLINE):
        with pytest.raises(BackendError, match="engine went away"):
            async for _ in tether.as_completed([gone, good]):
                pass
        with pytest.raises(BackendError, match="engine went away"):
            await tether.wait_all([gone, good])
        with pytest.raises(BackendError, match="engine went away"):
            async with tether.watch([gone]) as changes:
                async for _ in changes:
                    pass
    await real.cancel()


async def test_bad_input_gets_one_clear_line(runs: Runs) -> None:
    handle = await runs.dummy().submit(Job())
    with pytest.raises(ConfigError, match=r"tether\.FIRST_FAILED.*asyncio's FIRST_EXCEPTION"):
        await tether.wait_all([handle], return_when="FIRST_EXCEPTION")
    with pytest.raises(ConfigError, match="timeout must be None or a number of seconds >= 0"):
        await tether.wait_all([handle], timeout=-1)
    with pytest.raises(ConfigError, match="refresh_interval must be a positive number"):
        tether.watch([handle], refresh_interval=0)
    with pytest.raises(ArgumentTypeError, match=r"not one handle: as_completed\(\[handle\]\)"):
        tether.as_completed(handle)  # type: ignore[arg-type]
    with pytest.raises(ArgumentTypeError, match="takes a list of run handles, not int"):
        tether.watch(3)  # type: ignore[arg-type]
    submitting = runs.dummy().submit(Job())
    try:
        with pytest.raises(ArgumentTypeError, match=r"item 1 is a coroutine.*await it first"):
            await tether.wait_all([handle, submitting])  # type: ignore[list-item]
    finally:
        submitting.close()
    closed = tether.as_completed([handle])
    await closed.aclose()
    assert [r async for r in closed] == []  # closed before it began: it never starts
    watcher = tether.as_completed([handle])
    await watcher.__anext__()
    with pytest.raises(RuntimeError, match="started already"):
        async with watcher:
            pass
