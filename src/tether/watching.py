"""Watching many runs at once: ``as_completed``, ``wait_all`` and ``watch``.

Over any mix of backends. Each run is awaited through its own ``wait()``, which is
event-driven per backend (a pidfd, an eventfd, the Docker engine's wait, one shared
``squeue``), all in one task group: waiting on a thousand handles costs what the
backends' own waiting costs, and never a poll loop per handle. ``watch`` also
reports PENDING → RUNNING: a handle tells its watchers of every change of its state
(``RunHandle._state_listeners``, called by ``_set_state``), and the pending handles
whose ``wait()`` does not report the start by itself are refreshed in one shared,
slow round, which ends once none of them is pending.

Stopping a watcher (leaving its loop, cancelling its task, a timeout) stops only the
waiting: a cancelled ``wait()`` leaves its run going (the backend contract).
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import math
import sys
import weakref
from collections.abc import Callable, Coroutine, Iterable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ._live import live_table
from .errors import ArgumentTypeError, ConfigError
from .handle import RunHandle
from .result import RunResult, RunState

H = TypeVar("H", bound=RunHandle)
T = TypeVar("T")


class ReturnWhen(StrEnum):
    """When :func:`wait_all` returns (the names of ``asyncio.wait``'s constants)."""

    ALL_COMPLETED = "ALL_COMPLETED"  # every run is terminal
    FIRST_COMPLETED = "FIRST_COMPLETED"  # some run is terminal
    FIRST_FAILED = "FIRST_FAILED"  # some run ended without success, or every run is terminal


ALL_COMPLETED = ReturnWhen.ALL_COMPLETED
FIRST_COMPLETED = ReturnWhen.FIRST_COMPLETED
FIRST_FAILED = ReturnWhen.FIRST_FAILED


@dataclass(frozen=True)
class StateChange:
    """One run's move from one state to another, as a watcher saw it.

    Each run's terminal change (``new_state.is_terminal``) comes exactly once and
    carries its ``result``; a run already terminal when watching began gives one
    change with ``old_state == new_state``. ``time`` is when the watcher saw it (UTC).
    """

    run_id: str
    handle: RunHandle
    old_state: RunState
    new_state: RunState
    time: datetime
    result: RunResult | None = None

    @property
    def is_terminal(self) -> bool:
        """True for the run's last change (``result`` is set)."""
        return self.new_state.is_terminal

    def __str__(self) -> str:
        return f"{self.run_id}: {self.old_state.value} -> {self.new_state.value}"


# -- the public functions ----------------------------------------------------------------


def as_completed(handles: Iterable[RunHandle]) -> Watching[RunResult]:
    """Yield each run's result as the run ends, in completion order.

    ``async for result in tether.as_completed(handles)`` yields one result per
    distinct handle (a handle listed twice counts once); runs already terminal come
    first, in the order given. Leaving the loop early, or cancelling it, stops the
    waiting and never a run. An error from a handle's ``wait()`` (its backend's
    service failed) is raised by the loop, which ends there.

    Args:
        handles: run handles of any backends, mixed.
    """
    return Watching(_Feed(_distinct(handles, "as_completed"), states=False), _result_of)


def watch(handles: Iterable[RunHandle], *, refresh_interval: float = 1.0) -> Watching[StateChange]:
    """Yield a :class:`StateChange` each time one of the runs changes state.

    For progress bars, logs and UIs. Changes come as the backends report them; a
    pending run whose handle's ``wait()`` does not report its start is refreshed
    every ``refresh_interval`` seconds, all such handles in one round. The loop ends
    once every run is terminal (one terminal change each, carrying the result);
    leaving it early never stops a run.

    Args:
        handles: run handles of any backends, mixed; a handle listed twice counts once.
        refresh_interval: seconds between the rounds that look for started runs.
    """
    if not isinstance(refresh_interval, int | float) or not 0 < refresh_interval < math.inf:
        raise ConfigError(
            f"refresh_interval must be a positive number of seconds, not {refresh_interval!r}."
        )
    distinct = _distinct(handles, "watch")
    return Watching(_Feed(distinct, states=True, refresh_interval=refresh_interval), _itself)


async def wait_all(
    handles: Iterable[H],
    return_when: ReturnWhen | str = ALL_COMPLETED,
    timeout: float | None = None,
    *,
    progress: bool | None = None,
) -> tuple[set[H], set[H]]:
    """Wait for the runs; return ``(done, pending)``, two sets of handles.

    As ``asyncio.wait`` and ``concurrent.futures.wait``: ``done`` holds the handles
    whose run is terminal (``handle.last_result`` is its result), ``pending`` the
    others. ``return_when`` is :data:`ALL_COMPLETED` (the default),
    :data:`FIRST_COMPLETED` or :data:`FIRST_FAILED` (a run ended without success;
    with none, every run is terminal). When ``timeout`` seconds run out it returns
    what is done so far and raises nothing; it never cancels a run, and the runs in
    ``pending`` go on. An empty list returns two empty sets at once.

    Inside a Jupyter kernel a table of the runs' states updates in place while it
    waits (``progress=False``: never); nothing is shown in a terminal or a script.

    Raises:
        ConfigError: ``return_when`` or ``timeout`` is not one of the accepted values.
    """
    distinct = _distinct(handles, "wait_all")
    until = _return_when(return_when)
    if timeout is not None and (
        not isinstance(timeout, int | float) or math.isnan(timeout) or timeout < 0
    ):
        raise ConfigError(f"timeout must be None or a number of seconds >= 0, not {timeout!r}.")
    done = {handle for handle in distinct if handle.last_result is not None}
    failed = any(handle.last_result is not None and not handle.last_result.ok for handle in done)

    def reached() -> bool:
        if len(done) == len(distinct):
            return True
        if until is ReturnWhen.FIRST_COMPLETED:
            return bool(done)
        return until is ReturnWhen.FIRST_FAILED and failed

    table = live_table("waiting", [handle.run_id for handle in distinct], progress=progress)
    with table:
        for handle in distinct:
            table.update(handle.run_id, handle.state)
        if not reached():
            pending = {id(handle): handle for handle in distinct if handle not in done}
            # With a table to keep current, RUNNING is news too (one shared round).
            feed = _Feed(list(pending.values()), states=table.active)
            with anyio.move_on_after(timeout):
                async with Watching(feed, _itself) as changes:
                    async for change in changes:
                        table.update(change.run_id, change.new_state, _detail(change.result))
                        if not change.is_terminal:
                            continue
                        done.add(pending[id(change.handle)])
                        failed = failed or change.result is None or not change.result.ok
                        if reached():
                            break
    return done, {handle for handle in distinct if handle not in done}


def _detail(result: RunResult | None) -> str | None:
    """A live table row's detail for an ended run: its exit code, or its error."""
    if result is None:
        return None
    if not result.ok and result.error:
        return result.error.strip().splitlines()[0][:120]
    return None if result.exit_code is None else f"exit code {result.exit_code}"


# -- the iterator ------------------------------------------------------------------------


class Watching(Generic[T]):
    """What :func:`as_completed` and :func:`watch` return: an async iterator.

    Iterate it (``async for``) and the waiting runs in a task of its own, which stops
    when the loop is left (the iterator is dropped), exhausted, or ``aclose()`` is
    awaited. Or enter it (``async with tether.watch(hs) as changes:``) to run the
    waiting in the enclosing task's own task group, ended with the block: structured
    concurrency, deterministic on any Python. Either way no run is ever stopped.
    """

    def __init__(self, feed: _Feed, pick: Callable[[StateChange], T | None]) -> None:
        self._feed = feed
        self._pick = pick
        self._receive: MemoryObjectReceiveStream[_Item] | None = None
        self._stack: AsyncExitStack | None = None
        self._stop: weakref.finalize[Any, Any] | None = None

    async def __aenter__(self) -> Self:
        if self._receive is not None:
            raise RuntimeError(
                "this watcher has started already: enter it with `async with` once, "
                "before iterating it"
            )
        send, receive = anyio.create_memory_object_stream[_Item](math.inf)
        async with AsyncExitStack() as stack:
            group = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(group.cancel_scope.cancel)  # leaving ends the waits, not the runs
            stack.enter_context(receive)
            group.start_soon(self._feed.run, send)
            self._stack = stack.pop_all()
        self._receive = receive
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._stack is not None
        try:
            return await self._stack.__aexit__(exc_type, exc, tb)
        except BaseExceptionGroup as group:
            if exc is not None and len(group.exceptions) == 1 and group.exceptions[0] is exc:
                return False  # the block's own error, not wrapped by our task group
            raise

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> T:
        if self._receive is None:
            self._receive = self._start_detached()
        while True:
            try:
                item = await self._receive.receive()
            except (anyio.EndOfStream, anyio.ClosedResourceError):
                self._release()
                raise StopAsyncIteration from None
            if isinstance(item, _Failure):
                self._release()
                raise item.error
            picked = self._pick(item)
            if picked is not None:
                return picked

    async def aclose(self) -> None:
        """Stop watching now (the runs go on); iterating further yields nothing."""
        if self._receive is None:  # never started: make sure it never does
            send, self._receive = anyio.create_memory_object_stream[_Item](0)
            send.close()
        self._release()
        await anyio.lowlevel.checkpoint()

    def _start_detached(self) -> MemoryObjectReceiveStream[_Item]:
        """Run the feed in a task of no task group, stopped when this iterator is dropped.

        A plain ``async for`` never tells an iterator that it was left: no task group
        could be exited then, and an async generator's clean-up would run in another
        task. A task of its own, cancelled by a finalizer, needs neither.
        """
        send, receive = anyio.create_memory_object_stream[_Item](math.inf)
        scope = anyio.CancelScope()
        feed = self._feed  # the host must not hold this iterator, or it is never dropped

        async def host() -> None:
            with scope:
                await feed.run(send)

        _spawn_detached(host)
        self._stop = weakref.finalize(self, _abandon, scope, receive)
        self._stop.atexit = False
        return receive

    def _release(self) -> None:
        """Stop the feed and close the stream (idempotent)."""
        if self._stop is not None:
            self._stop()
        elif self._receive is not None:
            self._receive.close()  # the feed sees nobody listens and stops


def _abandon(scope: anyio.CancelScope, receive: MemoryObjectReceiveStream[_Item]) -> None:
    receive.close()
    with contextlib.suppress(RuntimeError):  # the event loop has already ended
        scope.cancel()


#: Detached hosts on asyncio (the loop holds only weak references to its tasks).
_HOSTS: set[Any] = set()


def _spawn_detached(host: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Start ``host`` outside any task group: anyio has no such call on purpose, so
    this is the one place that asks the event loop (trio's or asyncio's) directly."""
    trio = sys.modules.get("trio")
    if trio is not None:
        try:
            trio.lowlevel.current_trio_token()
        except RuntimeError:
            pass  # trio is imported, but this loop is asyncio's
        else:
            trio.lowlevel.spawn_system_task(host, context=contextvars.copy_context())
            return
    import asyncio

    task = asyncio.get_running_loop().create_task(host())
    _HOSTS.add(task)
    task.add_done_callback(_HOSTS.discard)


# -- the feed ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Failure:
    """A handle's ``wait()`` raised: the watcher's consumer gets the error."""

    handle: RunHandle
    error: Exception


_Item = StateChange | _Failure


class _Feed:
    """Waits on distinct handles in one task group and sends what it sees into a stream."""

    def __init__(
        self, handles: list[RunHandle], *, states: bool, refresh_interval: float = 1.0
    ) -> None:
        self._handles = handles
        self._states = states  # also report non-terminal changes (watch)
        self._interval = refresh_interval

    async def run(self, send: MemoryObjectSendStream[_Item]) -> None:
        """Send each handle's changes, then close the stream once all are terminal."""
        last = {handle: handle.state for handle in self._handles}
        with send, anyio.CancelScope() as scope:

            def deliver(item: _Item) -> None:
                try:
                    send.send_nowait(item)  # an unbounded buffer: never blocks a backend
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    scope.cancel()  # nobody listens any more

            def on_change(handle: RunHandle, old: RunState, new: RunState) -> None:
                if not new.is_terminal:  # the end comes from wait(), with the result
                    last[handle] = new
                    deliver(StateChange(handle.run_id, handle, old, new, _now()))

            async def wait_for(handle: RunHandle) -> None:
                try:
                    result = await handle.wait()
                except Exception as exc:  # the backend's service failed: tell the consumer
                    deliver(_Failure(handle, exc))
                    return
                deliver(
                    StateChange(handle.run_id, handle, last[handle], result.state, _now(), result)
                )

            pending = []
            for handle in self._handles:
                if (result := handle.last_result) is not None:
                    deliver(
                        StateChange(
                            handle.run_id, handle, result.state, result.state, _now(), result
                        )
                    )
                else:
                    pending.append(handle)
            if self._states:
                for handle in pending:
                    handle._state_listeners.append(on_change)
            try:
                async with anyio.create_task_group() as group:
                    if self._states:
                        group.start_soon(self._refresh_rounds, pending)
                    async with anyio.create_task_group() as waits:
                        for handle in pending:
                            waits.start_soon(wait_for, handle)
                    group.cancel_scope.cancel()  # every run is terminal: no more rounds
            finally:
                for handle in pending:
                    with contextlib.suppress(ValueError):
                        handle._state_listeners.remove(on_change)

    async def _refresh_rounds(self, handles: list[RunHandle]) -> None:
        """Refresh, every interval and one after the other, the pending handles whose
        ``wait()`` does not report a start; stop once none is pending (a running run
        never becomes pending again)."""
        unreported = [handle for handle in handles if not type(handle)._wait_reports_running]
        while due := [handle for handle in unreported if handle.state is RunState.PENDING]:
            await anyio.sleep(self._interval)
            for handle in due:
                if handle.state is RunState.PENDING:
                    # A failing refresh is news for wait(), which reports it, not for us.
                    with contextlib.suppress(Exception):
                        await handle.refresh()


# -- helpers -----------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC)


def _result_of(change: StateChange) -> RunResult | None:
    return change.result


def _itself(change: StateChange) -> StateChange:
    return change


def _distinct(handles: Iterable[H], caller: str) -> list[H]:
    """The handles in order, each once (by identity); refuse anything else clearly."""
    if isinstance(handles, RunHandle):
        raise ArgumentTypeError(
            f"{caller}() takes a list of run handles, not one handle: {caller}([handle])"
        )
    try:
        items = list(handles)
    except TypeError:
        raise ArgumentTypeError(
            f"{caller}() takes a list of run handles, not {type(handles).__name__}"
        ) from None
    seen: set[int] = set()
    distinct: list[H] = []
    for index, item in enumerate(items):
        if not isinstance(item, RunHandle):
            hint = ""
            if inspect.isawaitable(item):
                hint = ": await it first, e.g. [await backend.submit(job) for job in jobs]"
            raise ArgumentTypeError(
                f"{caller}() item {index} is a {type(item).__name__}, not a RunHandle{hint}"
            )
        if id(item) not in seen:
            seen.add(id(item))
            distinct.append(item)
    return distinct


def _return_when(value: ReturnWhen | str) -> ReturnWhen:
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return ReturnWhen(value.upper())
    hint = ""
    if value == "FIRST_EXCEPTION":
        hint = " (asyncio's FIRST_EXCEPTION is tether.FIRST_FAILED: a run that did not succeed)"
    raise ConfigError(
        "return_when must be tether.ALL_COMPLETED, tether.FIRST_COMPLETED or "
        f"tether.FIRST_FAILED, not {value!r}{hint}."
    )
