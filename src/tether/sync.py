"""The run-handle API for synchronous code: plain scripts, and notebook cells without ``await``.

::

    from tether import sync

    handle = sync.submit(job, backend=tether.LocalConfig())   # a SyncRunHandle
    handle.save("run.json")
    result = sync.load_handle("run.json").wait(timeout=60)    # any process, later

Every call runs the async API on one event loop of this process: an asyncio loop in a
daemon thread (``tether-sync``), behind an anyio blocking portal, started on first use
and stopped at interpreter exit. The calling thread only blocks, so the facade works
from a plain script, from many threads at once, and from a thread whose own event loop
is running (a Jupyter cell, a coroutine that does not ``await``), where
``asyncio.run`` would fail with "already running". Handles made here live on that loop.

Errors are the async API's own (:class:`~tether.errors.WaitTimeout`,
:class:`~tether.errors.RunFailedError`, a ``Call``'s exception…), re-raised in the
calling thread with their type kept. Ctrl-C during a blocking call stops that call and
leaves the run going (:func:`run` is the exception: it owns its run and cancels it).
"""

from __future__ import annotations

import atexit
import math
import os
import threading
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator, Iterable
from concurrent.futures import Future
from contextlib import aclosing, suppress
from functools import partial
from pathlib import Path
from typing import Any, Generic, TypeVar

import anyio
from anyio.from_thread import BlockingPortal
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from . import watching
from ._arguments import check_job, given
from .api import _backend
from .backend import Backend
from .config import BackendConfig
from .errors import ArgumentTypeError, ConfigError, DeadlockError
from .handle import RunHandle, Stream, check_stream
from .job import Job
from .result import RunResult, RunState
from .watching import ReturnWhen

__all__ = [
    "DeadlockError",
    "SyncRunHandle",
    "as_completed",
    "call",
    "load_handle",
    "run",
    "submit",
    "wait_all",
]

T = TypeVar("T")
HandleT = TypeVar("HandleT", bound="RunHandle | SyncRunHandle")

#: Seconds the interpreter's exit waits for the loop to finish what it must (a
#: shielded ``cancel()`` in flight) before leaving the daemon thread behind.
STOP_GRACE = 30.0

#: Log lines read ahead of the reader, and handed over per round trip to the loop.
_LOG_BUFFER = 1024


# -- the facade's event loop ------------------------------------------------------------


class _LoopThread:
    """One daemon thread running an asyncio loop behind an anyio blocking portal."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._portal: BlockingPortal | None = None
        self._thread: threading.Thread | None = None
        self._at_exit = False

    def portal(self, where: str) -> BlockingPortal:
        """The running portal (started on first use); refused on the loop's own thread."""
        if threading.current_thread() is self._thread:
            raise DeadlockError(
                f"{where} was called from tether's own event-loop thread, where blocking "
                "would deadlock: in async code there, await the async API instead "
                "(handle.aio, tether.load_handle, backend.submit)."
            )
        with self._lock:
            if self._portal is None:
                self._start()
            assert self._portal is not None
            return self._portal

    def _start(self) -> None:
        ready: Future[BlockingPortal] = Future()

        async def serve() -> None:
            async with BlockingPortal() as portal:
                ready.set_result(portal)
                await portal.sleep_until_stopped()

        def main() -> None:
            try:
                anyio.run(serve)
            except BaseException as exc:  # reported to the first caller, not lost in a thread
                if not ready.done():
                    ready.set_exception(exc)

        thread = threading.Thread(target=main, name="tether-sync", daemon=True)
        thread.start()
        self._portal = ready.result()
        self._thread = thread
        if not self._at_exit:
            atexit.register(self.stop)
            self._at_exit = True

    def stop(self) -> None:
        """Close what the loop opened, cancel the calls left waiting, and end the thread.

        Registered at interpreter exit; a later call starts a new loop.
        """
        with self._lock:
            portal, thread = self._portal, self._thread
            self._portal = self._thread = None
        if portal is None or thread is None or thread is threading.current_thread():
            return
        with suppress(Exception):
            portal.call(_close_loop_resources)
        with suppress(RuntimeError):  # the loop has ended already
            portal.call(portal.stop, True)  # shielded work (a cancel in flight) still ends
        thread.join(STOP_GRACE)

    def forget(self) -> None:
        """In a forked child: the parent's loop thread does not exist here."""
        self._lock = threading.Lock()
        self._portal = self._thread = None


async def _close_loop_resources() -> None:
    """What backends keep per event loop and must close before it ends (Dask clusters)."""
    from .backends.dask import close_embedded

    with anyio.move_on_after(10):
        await close_embedded()


_LOOP = _LoopThread()
os.register_at_fork(after_in_child=_LOOP.forget)


class _Outcome(Generic[T]):
    """A task's value, or the BaseException it raised (kept out of the portal's task group,
    which a KeyboardInterrupt or SystemExit from a ``Call`` would otherwise tear down)."""

    __slots__ = ("error", "value")

    def __init__(self, value: T | None = None, error: BaseException | None = None) -> None:
        self.value = value
        self.error = error

    def unwrap(self) -> T:
        if self.error is not None:
            raise self.error
        return self.value  # type: ignore[return-value]


async def _guarded(fn: Callable[[], Awaitable[T]]) -> _Outcome[T]:
    try:
        return _Outcome(await fn())
    except anyio.get_cancelled_exc_class():
        raise
    except Exception:
        raise
    except BaseException as exc:
        return _Outcome(error=exc)


def _call(where: str, fn: Callable[[], Awaitable[T]]) -> T:
    """Run ``fn()`` on the facade's loop and block for its result.

    Its exception is re-raised here. A KeyboardInterrupt (or any exception raised in
    this thread while it blocks) cancels the task on the loop, so the call stops at
    once; the async API's contract then leaves the run itself going.
    """
    future = _LOOP.portal(where).start_task_soon(_guarded, fn)
    try:
        outcome = future.result()
    except BaseException:
        future.cancel()
        raise
    return outcome.unwrap()


# -- checks of the arguments -----------------------------------------------------------


def _check_timeout(timeout: object, where: str) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise ArgumentTypeError(
            f"{where}: timeout must be a number of seconds or None, not {given(timeout)}"
        )
    if math.isnan(timeout) or timeout < 0:
        raise ConfigError(
            f"{where}: timeout must be a number of seconds >= 0 (or None to wait "
            f"without limit), not {timeout!r}"
        )
    return float(timeout)


def _check_path(path: object, where: str) -> Path:
    if not isinstance(path, str | os.PathLike):
        raise ArgumentTypeError(f"{where}: path must be a str or a Path, not {given(path)}")
    return Path(path)


# -- the handle ------------------------------------------------------------------------


class SyncRunHandle:
    """A run handle for synchronous code: :class:`~tether.RunHandle`'s API without ``await``.

    Made by :func:`submit` and :func:`load_handle`, or around an async handle you
    already have: ``SyncRunHandle(await backend.submit(job))``. ``.aio`` is that async
    handle. Any thread may use a handle, several at once (one waits while another
    cancels); the work runs on the facade's event loop.
    """

    __slots__ = ("_handle",)

    def __init__(self, handle: RunHandle | SyncRunHandle) -> None:
        if isinstance(handle, SyncRunHandle):
            handle = handle.aio
        if not isinstance(handle, RunHandle):
            raise ArgumentTypeError(
                "SyncRunHandle(): handle must be a tether.RunHandle (from backend.submit "
                f"or tether.load_handle), not {given(handle)}"
            )
        self._handle = handle

    # -- plain attributes (they touch nothing) ------------------------------------------

    @property
    def aio(self) -> RunHandle:
        """The async :class:`~tether.RunHandle` this wraps (for ``await`` code)."""
        return self._handle

    @property
    def run_id(self) -> str:
        """The run's id, unique across backends and machines."""
        return self._handle.run_id

    @property
    def backend_type(self) -> str:
        """Registry name of the backend that runs it (``"local"``, ``"dummy"``…)."""
        return self._handle.backend_type

    @property
    def state(self) -> RunState:
        """The last state observed; call :meth:`refresh` for news."""
        return self._handle.state

    @property
    def run_dir(self) -> Path | None:
        """The run's folder (logs, outputs, records), if the backend keeps one."""
        return self._handle.run_dir

    @property
    def job(self) -> Job:
        """The job this run executes."""
        return self._handle.job

    @property
    def config(self) -> BackendConfig:
        """The backend settings the run was submitted with."""
        return self._handle.config

    @property
    def last_result(self) -> RunResult | None:
        """The terminal result once observed, else None."""
        return self._handle.last_result

    def to_record(self) -> dict[str, Any]:
        """The JSON-ready record :meth:`save` writes."""
        return self._handle.to_record()

    def __repr__(self) -> str:
        return f"SyncRunHandle({self._handle!r})"

    def _repr_html_(self) -> str | None:
        """The async handle's notebook rendering, when it has one."""
        html = getattr(self._handle, "_repr_html_", None)
        return html() if callable(html) else None

    # -- blocking calls ---------------------------------------------------------------------

    def refresh(self) -> RunState:
        """Ask the backend for the run's current state, store it and return it."""
        return _call("SyncRunHandle.refresh()", self._handle.refresh)

    def is_complete(self) -> bool:
        """True once the run is terminal (asks the backend)."""
        return _call("SyncRunHandle.is_complete()", self._handle.is_complete)

    def wait(self, timeout: float | None = None) -> RunResult:
        """Block until the run is terminal and return its result.

        With ``timeout`` (seconds), raise :class:`~tether.WaitTimeout` (a
        ``TimeoutError``) when it runs out. Neither that nor Ctrl-C stops the run.
        """
        where = "SyncRunHandle.wait()"
        seconds = _check_timeout(timeout, where)
        return _call(where, partial(self._handle.wait, seconds))

    def result(self) -> RunResult:
        """Wait for the run; return its result, or raise why it did not succeed.

        A ``Call`` whose function raised re-raises that exception; any other failure
        raises :class:`~tether.RunFailedError` (:class:`~tether.RunTimedOutError`).
        """
        return _call("SyncRunHandle.result()", self._handle.result)

    def cancel(self) -> None:
        """End the run and everything it started; idempotent.

        Returns once nothing of the run is left running; interrupted by Ctrl-C, the
        cancel still completes on the facade's loop.
        """
        _call("SyncRunHandle.cancel()", self._handle.cancel)

    def logs(
        self, stream: Stream = "stdout", *, follow: bool = False
    ) -> Generator[str, None, None]:
        """The run's output lines (without newlines), as a plain iterator.

        With ``follow=True`` keep yielding new lines while the run goes on, and stop
        once it has ended and everything was read. Lines are read ahead in batches;
        stop early with ``break`` (or ``close()`` on the iterator).
        """
        check_stream(stream)
        return _lines(self._handle, stream, follow)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the handle's record to ``path`` (versioned JSON, mode 0600); return it."""
        where = "SyncRunHandle.save()"
        target = _check_path(path, where)
        return _call(where, partial(self._handle.save, target))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SyncRunHandle:
        """The handle saved at ``path``, whichever backend made it (see :func:`load_handle`)."""
        return load_handle(path)


# -- logs as a plain iterator ---------------------------------------------------------------


def _open_lines(
    handle: RunHandle, stream: Stream, follow: bool
) -> tuple[AsyncGenerator[str, None], MemoryObjectSendStream[str], MemoryObjectReceiveStream[str]]:
    """On the loop: the handle's line generator and the buffer it is pumped into."""
    send, receive = anyio.create_memory_object_stream[str](max_buffer_size=_LOG_BUFFER)
    return handle.logs(stream, follow=follow), send, receive


async def _pump(lines: AsyncGenerator[str, None], send: MemoryObjectSendStream[str]) -> None:
    """Copy ``lines`` into ``send`` until they end or the reader goes away."""
    async with send, aclosing(lines):
        with suppress(anyio.BrokenResourceError):
            async for line in lines:
                await send.send(line)


async def _next_batch(receive: MemoryObjectReceiveStream[str]) -> list[str]:
    """The next line, and whatever else is buffered already; [] at the end."""
    try:
        batch = [await receive.receive()]
    except anyio.EndOfStream:
        return []
    with suppress(anyio.WouldBlock, anyio.EndOfStream):
        while len(batch) < _LOG_BUFFER:
            batch.append(receive.receive_nowait())
    return batch


def _lines(handle: RunHandle, stream: Stream, follow: bool) -> Generator[str, None, None]:
    where = "SyncRunHandle.logs()"
    portal = _LOOP.portal(where)
    lines, send, receive = portal.call(_open_lines, handle, stream, follow)
    pump = portal.start_task_soon(_guarded, partial(_pump, lines, send))
    try:
        while batch := _call(where, partial(_next_batch, receive)):
            yield from batch
        pump.result().unwrap()  # the logs' own error, if they raised one
    finally:
        pump.cancel()
        with suppress(RuntimeError):  # the loop has ended (interpreter exit)
            portal.call(receive.close)


# -- module functions ------------------------------------------------------------------------


def submit(job: Job, backend: Backend[Any] | BackendConfig | str | None = None) -> SyncRunHandle:
    """Start ``job`` and return its :class:`SyncRunHandle` at once; the run goes on unattended.

    ``backend`` is a backend, a config (``tether.LocalConfig(...)``), a backend type
    name such as ``"dummy"``, or None for the local backend.
    """
    where = "sync.submit()"
    check_job(job, where)
    chosen = _backend(backend, where)
    return SyncRunHandle(_call(where, partial(chosen.submit, job)))


def load_handle(path: str | os.PathLike[str]) -> SyncRunHandle:
    """Re-attach to the run saved at ``path`` (by any process), whichever backend made it.

    The handle is refreshed once, so its ``state`` is current; a run that cannot be
    found any more comes back LOST, not as an error.
    """
    from .registry import load_handle as load_async

    where = "sync.load_handle()"
    source = _check_path(path, where)
    return SyncRunHandle(_call(where, partial(load_async, source)))


def run(
    job: Job,
    backend: Backend[Any] | BackendConfig | str | None = None,
    *,
    timeout: float | None = None,
) -> RunResult:
    """Submit ``job``, wait for it and return its result (the local backend by default).

    ``timeout`` bounds the wait only: :class:`~tether.WaitTimeout` leaves the run
    going. ``run`` owns the run it starts, so Ctrl-C cancels the run before the
    ``KeyboardInterrupt`` goes on (a second Ctrl-C stops waiting for that cancel).
    """
    return _run(job, backend, timeout, "sync.run()")


def _run(
    job: Job,
    backend: Backend[Any] | BackendConfig | str | None,
    timeout: float | None,
    where: str,
) -> RunResult:
    check_job(job, where)
    seconds = _check_timeout(timeout, where)
    chosen = _backend(backend, where)
    handle = SyncRunHandle(_call(where, partial(chosen.submit, job)))
    try:
        return _call(where, partial(handle.aio.wait, seconds))
    except KeyboardInterrupt:
        handle.cancel()
        raise


# -- many runs, and any coroutine --------------------------------------------------------


def _async_handles(handles: Iterable[RunHandle | SyncRunHandle], where: str) -> list[RunHandle]:
    if isinstance(handles, RunHandle | SyncRunHandle):
        raise ArgumentTypeError(f"{where} takes a list of run handles, not one handle")
    return [h.aio if isinstance(h, SyncRunHandle) else h for h in handles]


def wait_all(
    handles: Iterable[HandleT],
    return_when: ReturnWhen | str = "ALL_COMPLETED",
    timeout: float | None = None,
) -> tuple[set[HandleT], set[HandleT]]:
    """:func:`tether.wait_all` without ``await``: ``(done, pending)`` sets of the
    handles given (sync or async ones); a timeout returns, and never stops a run."""
    where = "sync.wait_all()"
    given_handles = list(handles)
    inner = _async_handles(given_handles, where)
    seconds = _check_timeout(timeout, where)
    done, _ = _call(where, partial(watching.wait_all, inner, return_when, seconds))
    ended = {id(handle) for handle in done}
    finished = {h for h, a in zip(given_handles, inner, strict=True) if id(a) in ended}
    return finished, {h for h in given_handles if h not in finished}


def as_completed(handles: Iterable[RunHandle | SyncRunHandle]) -> Generator[RunResult, None, None]:
    """:func:`tether.as_completed` as a plain iterator: each run's result as it ends.

    Leaving the loop early (``break``, an error, Ctrl-C) stops the waiting, never a run.
    """
    where = "sync.as_completed()"
    inner = _async_handles(handles, where)
    portal = _LOOP.portal(where)
    results = portal.call(watching.as_completed, inner)
    try:
        while True:
            try:
                yield _call(where, results.__anext__)
            except StopAsyncIteration:
                return
    finally:
        with suppress(RuntimeError):  # the loop has ended (interpreter exit)
            portal.call(results.aclose)


def call(fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
    """Run the coroutine function ``fn(*args, **kwargs)`` on the facade's event loop and
    return its value (re-raising its exception): any async tether API from sync code,
    e.g. ``sync.call(tether.map_calls, square, range(10))``."""
    if not callable(fn):
        raise ArgumentTypeError(f"sync.call() takes a coroutine function, not {given(fn)}")
    return _call(f"sync.call({getattr(fn, '__qualname__', fn)!r})", partial(fn, *args, **kwargs))
