"""The inline backend's engines: a thread pool and a process pool, shared per process.

Both pools take :class:`InlineRun` objects from a queue; worker threads move each
run through PENDING → RUNNING → a terminal state and wake its waiters through an
eventfd, so any event loop (asyncio or trio) can await it without a thread of its
own. The pools live as long as the process; a fork gets fresh ones.

* Threads (``sequential`` is one thread): the call runs in the pool's thread, its
  ``print`` output captured per thread. Cancel and timeout raise an exception in
  that thread (``PyThreadState_SetAsyncExc``), which lands at the call's next
  Python bytecode; a call blocked in C code cannot be stopped, and after the grace
  the run is recorded as ended while the thread finishes the call on its own.
* Processes: each slot is a thread driving one worker process (``tether.worker
  --pool``) over two pipes; cancel and timeout end that process (TERM, then KILL
  after the grace) and the next run starts a new one.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import ctypes
import heapq
import os
import pickle
import select
import signal
import subprocess
import sys
import threading
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable
from queue import Empty, SimpleQueue
from typing import Any, TextIO

import anyio

from .. import _worker as worker
from ..call import Call, decode_outcome
from ..result import RunState


class Signal:
    """A one-shot flag that threads set and async tasks of any event loop await."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._set = False
        self._fds: list[int] = []

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        with self._lock:
            self._set = True
            for fd in self._fds:
                os.eventfd_write(fd, 1)

    async def wait(self) -> None:
        with self._lock:
            if self._set:
                return
            fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self._fds.append(fd)
        try:
            await anyio.wait_readable(fd)
        finally:
            with self._lock:
                self._fds.remove(fd)
                os.close(fd)


class Interrupted(BaseException):
    """Raised inside a thread's call to stop it (cancel or timeout)."""


class InlineRun:
    """One call's life in a pool; shared by every handle of the run in this process."""

    def __init__(
        self,
        run_id: str,
        call: Call,
        timeout: float,
        env: dict[str, str],
        payload: bytes | None = None,
    ) -> None:
        self.run_id = run_id
        self.call = call
        self.payload = payload  # processes mode: pickled at submit
        self.cwd: str | None = None  # processes mode: the config's working_dir
        self.timeout = timeout
        self.env = env
        self.lock = threading.Lock()
        self.done = Signal()
        self.state = RunState.PENDING
        self.stop_reason: str | None = None  # "cancelled" or "timeout", once asked
        self.submitted = time.time()
        self.started: float | None = None
        self.ended: float | None = None
        self.outcome: dict[str, Any] = {}
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.thread_id: int | None = None  # threads mode: the thread inside the call
        self.in_call = False
        self.on_stop: Callable[[], None] | None = None  # processes mode: wake the slot
        self.worker_pid: int | None = None  # processes mode: the process given the call

    def begin(self) -> bool:
        """PENDING → RUNNING, unless the run was cancelled while queued."""
        with self.lock:
            if self.state is not RunState.PENDING:
                return False
            self.state = RunState.RUNNING
            self.started = time.time()
            return True

    def end(self, state: RunState, **outcome: Any) -> None:
        """Record the terminal state once and wake every waiter."""
        with self.lock:
            if self.state.is_terminal:
                return
            self.state = state
            self.ended = time.time()
            self.outcome = outcome
        self.done.set()

    def force_end(self, reason: str) -> None:
        """End a run whose thread did not stop within the grace (it runs on, unseen)."""
        self.end(
            _STOPPED[reason],
            error=f"{_stop_error(reason, self.timeout)}; the call did not stop and runs on in "
            "its thread until it returns (threads cannot be killed: use mode='processes')",
        )

    def request_stop(self, reason: str) -> None:
        """Ask the run to end (cancel or timeout); a queued run ends at once."""
        with self.lock:
            if self.state.is_terminal or self.stop_reason is not None:
                return
            self.stop_reason = reason
            pending = self.state is RunState.PENDING
            wake = self.on_stop
            thread_id = self.thread_id if self.in_call else None
            if thread_id is not None:
                _raise_in_thread(thread_id)
        if pending:
            self.end(_STOPPED[reason], error=_stop_error(reason, self.timeout))
        elif wake is not None:
            wake()


_STOPPED = {"cancelled": RunState.CANCELLED, "timeout": RunState.TIMED_OUT}


def _stop_error(reason: str, timeout: float) -> str:
    return "cancelled" if reason == "cancelled" else f"timed out after {timeout:g}s"


def _raise_in_thread(thread_id: int) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(Interrupted)
    )


# -- output capture for calls running in threads ---------------------------------------

_capture = threading.local()


class _ThreadStream:
    """Stands in for sys.stdout/stderr: a thread running a call writes to its run,
    every other thread to the original stream.

    Not an ``io.TextIOBase``: everything but ``write``/``flush`` (``isatty``,
    ``fileno``, ``encoding``…) must come from the original stream.
    """

    def __init__(self, original: TextIO, name: str) -> None:
        self._original = original
        self._name = name

    def write(self, text: str) -> int:
        target = getattr(_capture, self._name, None)
        if target is None:
            return self._original.write(text)
        target.append(text)
        return len(text)

    def flush(self) -> None:
        if getattr(_capture, self._name, None) is None:
            self._original.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._original, name)


def _install_streams() -> None:
    for name in ("stdout", "stderr"):
        current = getattr(sys, name)
        if not isinstance(current, _ThreadStream) and current is not None:
            setattr(sys, name, _ThreadStream(current, name))


# -- pools --------------------------------------------------------------------------------


class Pool(ABC):
    """A fixed number of slots taking runs from one queue."""

    def __init__(self, workers: int, grace: float) -> None:
        self.workers = workers
        self.grace = grace
        self.queue: SimpleQueue[InlineRun | None] = SimpleQueue()
        self.threads = [
            threading.Thread(target=self._slot, name=f"tether-inline-{i}", daemon=True)
            for i in range(workers)
        ]
        for thread in self.threads:
            thread.start()

    def submit(self, run: InlineRun) -> None:
        self.queue.put(run)

    @abstractmethod
    def _slot(self) -> None:
        """Take runs from the queue and run them until a ``None`` arrives."""

    def close(self) -> None:
        for _ in self.threads:
            self.queue.put(None)


class ThreadPool(Pool):
    """Calls run in the pool's own threads (``sequential`` is one thread)."""

    def __init__(self, workers: int, grace: float, capture: bool) -> None:
        self.capture = capture
        self.watchdog = _Watchdog(grace)
        super().__init__(workers, grace)

    def submit(self, run: InlineRun) -> None:
        if self.capture:  # again each time: someone (pytest, ipykernel) may have swapped them
            _install_streams()
        super().submit(run)

    def _slot(self) -> None:
        while (run := self.queue.get()) is not None:
            if run.begin():
                self._execute(run)

    def _execute(self, run: InlineRun) -> None:
        call = run.call
        fn, args, kwargs = call.function, call.args, call.kwargs
        if run.timeout:
            self.watchdog.add(time.monotonic() + run.timeout, run)
        if self.capture:
            _capture.stdout, _capture.stderr = run.stdout, run.stderr
        state, outcome = RunState.FAILED, {}
        try:
            try:
                with run.lock:
                    run.thread_id, run.in_call = threading.get_ident(), True
                    stop = run.stop_reason
                if stop is not None:
                    raise Interrupted
                value = fn(*args, **kwargs)
            finally:
                with run.lock:
                    run.in_call = False
            state, outcome = RunState.SUCCEEDED, {"value": value, "exit_code": 0}
        except Interrupted:
            reason = run.stop_reason or "cancelled"
            state, outcome = _STOPPED[reason], {"error": _stop_error(reason, run.timeout)}
        except SystemExit as exc:
            fields = decode_outcome(worker._exit_outcome(exc))
            state = RunState.SUCCEEDED if fields["ok"] else RunState.FAILED
            outcome = {"error": fields["error"], "exit_code": fields["exit_code"]}
        except BaseException as exc:
            state = RunState.FAILED
            tb = exc.__traceback__.tb_next if exc.__traceback__ else None
            text = "".join(traceback.format_exception(type(exc), exc, tb))
            name = worker.type_name(exc)
            outcome = {
                "exception": exc,
                "traceback": text,
                "error": f"{name}: {exc}" if str(exc) else name,
                "exit_code": None,
            }
        finally:
            if self.capture:
                _capture.stdout = _capture.stderr = None
        run.end(state, **outcome)


class _Watchdog:
    """One thread per thread pool that stops calls at their deadlines."""

    def __init__(self, grace: float) -> None:
        self._grace = grace
        self._heap: list[tuple[float, int, InlineRun, bool]] = []
        self._count = 0
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    def add(self, deadline: float, run: InlineRun, *, final: bool = False) -> None:
        with self._wake:
            self._count += 1
            heapq.heappush(self._heap, (deadline, self._count, run, final))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="tether-inline-watchdog", daemon=True
                )
                self._thread.start()
            self._wake.notify()

    def _loop(self) -> None:
        with self._wake:
            while True:
                while self._heap and self._heap[0][2].state.is_terminal:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._wake.wait()
                    continue
                deadline, _, run, final = self._heap[0]
                delay = deadline - time.monotonic()
                if delay > 0:
                    self._wake.wait(delay)
                    continue
                heapq.heappop(self._heap)
                if final:
                    run.force_end("timeout")
                else:
                    run.request_stop("timeout")
                    self._count += 1
                    entry = (deadline + self._grace, self._count, run, True)
                    heapq.heappush(self._heap, entry)


class _Worker:
    """One worker process and its two pipes."""

    def __init__(self) -> None:
        to_child, self.send_fd = os.pipe()
        self.recv_fd, from_child = os.pipe()
        try:
            self.process = subprocess.Popen(
                [*_worker_argv(), "--pool", str(to_child), str(from_child), str(os.getpid())],
                pass_fds=(to_child, from_child),
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C in the terminal is the parent's to handle
            )
        finally:
            os.close(to_child)
            os.close(from_child)
        self.buffer = bytearray()
        self.eof = False

    def next_frame(self) -> bytes | None:
        """A whole outcome frame already read from the pipe, if there is one."""
        header = worker.FRAME_HEADER
        if len(self.buffer) < header.size:
            return None
        size = header.size + header.unpack_from(self.buffer)[0]
        if len(self.buffer) < size:
            return None
        data = bytes(self.buffer[header.size : size])
        del self.buffer[:size]
        return data

    def fill(self) -> None:
        """Read what the pipe has (call when poll says it is readable)."""
        chunk = os.read(self.recv_fd, 1 << 16)
        if chunk:
            self.buffer += chunk
        else:
            self.eof = True

    def stop(self, grace: float) -> int | None:
        """TERM, then KILL after ``grace``; return the exit status."""
        with contextlib.suppress(ProcessLookupError):
            self.process.terminate()
        try:
            return self.process.wait(grace)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()
        finally:
            self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.send_fd)
        with contextlib.suppress(OSError):
            os.close(self.recv_fd)


def _worker_argv() -> list[str]:
    from ..call import call_argv

    return call_argv()


class ProcessPool(Pool):
    """Calls run in worker processes, one slot thread driving each.

    A slot keeps up to two calls in its worker's pipe, so the worker starts the
    next call as soon as it sends an outcome (no round trip in between). The second
    call stays PENDING until the first ends; if it is cancelled meanwhile, the
    worker is replaced before it can start it.
    """

    DEPTH = 2

    def _slot(self) -> None:
        slot = _Slot(self)
        try:
            slot.loop()
        finally:
            slot.close()


class _Slot:
    """One worker process, the calls in its pipe, and the wake-up pipe for stops."""

    def __init__(self, pool: ProcessPool) -> None:
        self.pool = pool
        self.worker: _Worker | None = None
        self.inflight: collections.deque[InlineRun] = collections.deque()
        self.wake_r, self.wake_w = os.pipe()
        self.deadline = 0.0

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()
        os.close(self.wake_r)
        os.close(self.wake_w)

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self.wake_w, b"x")

    def loop(self) -> None:
        queue = self.pool.queue
        while True:
            if not self.inflight:
                run = queue.get()
                if run is None:
                    return
                self._send(run)
            while len(self.inflight) < ProcessPool.DEPTH:
                try:
                    run = queue.get_nowait()
                except Empty:
                    break
                if run is None:
                    return
                self._send(run)
            if self.inflight:
                self._wait_head()

    def _send(self, run: InlineRun) -> None:
        """Put ``run`` in the worker's pipe (starting a worker if needed)."""
        if run.state.is_terminal:
            return  # cancelled while queued
        try:
            payload = run.payload if run.payload is not None else run.call.payload()
        except Exception as exc:
            run.end(RunState.FAILED, error=str(exc))
            return
        if self.worker is None:
            try:
                self.worker = _Worker()
            except OSError as exc:
                run.end(RunState.FAILED, error=f"cannot start a worker process: {exc}")
                return
        with run.lock:
            run.on_stop = self._wake
            run.worker_pid = self.worker.process.pid
        cwd = str(run.call.workdir.expanduser().absolute()) if run.call.workdir else run.cwd
        frame = worker.frame(pickle.dumps((run.env, cwd, payload), worker.PROTOCOL))
        with contextlib.suppress(OSError):  # a dead worker shows as the end of its pipe
            os.write(self.worker.send_fd, frame)
        self.inflight.append(run)
        if len(self.inflight) == 1:
            self._start_head()

    def _start_head(self) -> None:
        """The first call in the pipe is the one the worker runs now."""
        while self.inflight:
            head = self.inflight[0]
            if head.begin():
                self.deadline = time.monotonic() + head.timeout
                return
            # Cancelled while it waited in the pipe: the worker is starting it now.
            self.inflight.popleft()
            self._replace_worker()

    def _replace_worker(self) -> None:
        """Stop the worker; calls still in its pipe go to a new one."""
        assert self.worker is not None
        self.worker.stop(self.pool.grace)
        self.worker = None
        waiting = list(self.inflight)
        self.inflight.clear()
        for run in waiting:
            self._send(run)

    def _wait_head(self) -> None:
        head = self.inflight[0]
        assert self.worker is not None
        poller = select.poll()
        poller.register(self.worker.recv_fd, select.POLLIN)
        poller.register(self.wake_r, select.POLLIN)
        while (data := self.worker.next_frame()) is None and not self.worker.eof:
            left = self.deadline - time.monotonic()
            if left <= 0:
                head.request_stop("timeout")
            if head.stop_reason is not None:
                self.inflight.popleft()
                reason = head.stop_reason
                self._replace_worker()
                head.end(_STOPPED[reason], error=_stop_error(reason, head.timeout))
                return
            events = dict(poller.poll(max(0.0, min(left, 3600)) * 1000))
            if self.wake_r in events:
                os.read(self.wake_r, 64)
            if self.worker.recv_fd in events:
                self.worker.fill()
        self.inflight.popleft()
        if data is None:
            code = self.worker.process.wait()
            how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
            self.worker.close()
            self.worker = None
            head.end(RunState.FAILED, error=f"the worker process died ({how})")
            waiting = list(self.inflight)
            self.inflight.clear()
            for run in waiting:
                self._send(run)
            return
        raw = pickle.loads(data)
        fields = decode_outcome(raw)
        head.stdout.append(raw.get("stdout", ""))
        head.stderr.append(raw.get("stderr", ""))
        ok = fields.pop("ok")
        head.end(RunState.SUCCEEDED if ok else RunState.FAILED, **fields)
        self._start_head()


# -- the per-process registry -----------------------------------------------------------

_pools: dict[tuple[str, int, float, bool], Pool] = {}
_pools_pid = os.getpid()
_pools_lock = threading.Lock()


def get_pool(mode: str, workers: int, grace: float, capture: bool) -> Pool:
    """The process's pool for these settings, started on first use."""
    global _pools_pid
    with _pools_lock:
        if _pools_pid != os.getpid():  # a forked child: the parent's threads are not here
            _pools.clear()
            _pools_pid = os.getpid()
        key = (mode, workers, grace, capture)
        pool = _pools.get(key)
        if pool is None:
            if mode == "processes":
                pool = ProcessPool(workers, grace)
            else:
                pool = ThreadPool(workers, grace, capture)
            _pools[key] = pool
        return pool


@atexit.register
def _close_pools() -> None:
    with _pools_lock:
        for pool in _pools.values():
            pool.close()
        _pools.clear()
