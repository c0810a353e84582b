"""Waiting for any number of supervisors with a bounded number of file descriptors.

A pidfd per waiting handle is the cheapest wait there is, but each one is a file
descriptor: under the common limit of 1,024 open files, awaiting a few thousand runs
at once would fail with ``EMFILE``. So waits take pidfds from a budget (half the soft
``RLIMIT_NOFILE``, less a margin); past it, they share one inotify descriptor per
event loop, watching their run folders for ``exit.json`` (which a supervisor renames
into place as its last act) and for the folder going away. A sweep, every few seconds,
catches the supervisors that die without a record (SIGKILL, OOM): a run that ends that
way is seen as LOST within the sweep interval instead of at once.

Overflow waits need no thread and no task of their own: the first of them reads the
inotify descriptor for all of them, and hands the job on when its own wait ends.
"""

from __future__ import annotations

import asyncio
import os
import resource
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import sniffio

#: File descriptors left to everything else when the pidfd budget is set.
_FD_MARGIN = 64
_IN_MOVED_TO = 0x00000080
_IN_CREATE = 0x00000100
_IN_DELETE_SELF = 0x00000400
_IN_MOVE_SELF = 0x00000800
_IN_Q_OVERFLOW = 0x00004000
_IN_IGNORED = 0x00008000
_IN_ONLYDIR = 0x01000000
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
_WATCHED = _IN_MOVED_TO | _IN_CREATE | _IN_DELETE_SELF | _IN_MOVE_SELF | _IN_ONLYDIR
_GONE = _IN_DELETE_SELF | _IN_MOVE_SELF | _IN_IGNORED
_EVENT = struct.Struct("iIII")
_EXIT_NAME = b"exit.json"


class _Budget:
    """How many pidfds waits may hold at once in this process (all loops share it)."""

    def __init__(self) -> None:
        self.limit: int | None = None
        self.used = 0

    def take(self) -> bool:
        if self.limit is None:
            soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
            if soft == resource.RLIM_INFINITY:
                soft = 1 << 21
            self.limit = max(0, soft // 2 - _FD_MARGIN)
        if self.used >= self.limit:
            return False
        self.used += 1
        return True

    def give(self) -> None:
        self.used -= 1


_budget = _Budget()


def pidfd_budget() -> tuple[int, int]:
    """(pidfds held by waits now, the most they may hold): for tests and benches."""
    if _budget.take():  # sets the limit on first use
        _budget.give()
    return _budget.used, int(_budget.limit or 0)


async def wait_exit(
    open_pidfd: Callable[[], int | None],
    alive: Callable[[], bool],
    run_dir: Path,
    timeout: float | None = None,
) -> None:
    """Return when the supervisor has exited or ``run_dir`` has its ``exit.json``.

    ``open_pidfd`` gives a pidfd of the proven supervisor (None if it is gone or not
    the run's); ``alive`` tells whether it still runs, for the sweep. It may return
    early (a spurious wake-up): callers check the run's state and wait again. With
    ``timeout``, it returns after that many seconds at most.
    """
    if _budget.take():
        try:
            fd = open_pidfd()
            if fd is None:
                return
            try:
                if timeout is None:
                    await _readable(fd)  # no cancel scope to set up: most waits
                else:
                    with anyio.move_on_after(timeout):
                        await _readable(fd)
            finally:
                os.close(fd)
        finally:
            _budget.give()
        return
    with anyio.move_on_after(timeout):
        await _shared().wait(_Waiter(run_dir, alive))


async def _readable(fd: int) -> None:
    """``anyio.wait_readable``, straight on asyncio's loop when that is the one running
    (a third less time per wait, which counts in a submit-and-wait loop)."""
    if sniffio.current_async_library() != "asyncio":
        await anyio.wait_readable(fd)
        return
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    loop.add_reader(fd, ready.set_result, None)
    try:
        await ready
    finally:
        loop.remove_reader(fd)


class _Waiter:
    __slots__ = ("alive", "done", "run_dir", "wakeup", "wd")

    def __init__(self, run_dir: Path, alive: Callable[[], bool]) -> None:
        self.run_dir = run_dir
        self.alive = alive
        self.done = False
        self.wakeup = anyio.Event()
        self.wd = -1

    def wake(self, done: bool = True) -> None:
        self.done = self.done or done
        self.wakeup.set()


class _Shared:
    """The overflow waits of one event loop: one inotify descriptor and one sweep."""

    def __init__(self, key: object) -> None:
        self.key = key
        self.waiters: set[_Waiter] = set()
        # Those not woken yet, oldest first: who may be asked to lead, found in O(1).
        self.pending: dict[_Waiter, None] = {}
        self.by_wd: dict[int, set[_Waiter]] = {}
        self.leader: _Waiter | None = None
        self.fd = -1
        self.libc: Any = None
        self.next_sweep = 0.0
        self._open()

    def _open(self) -> None:
        try:
            import ctypes  # only here: overflow waits are the rare case

            libc = ctypes.CDLL(None, use_errno=True)
            fd = int(libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC))
        except (OSError, AttributeError):
            return  # no inotify: the sweep alone notices the ends, more slowly
        if fd >= 0:
            self.fd, self.libc = fd, libc

    def sweep_interval(self) -> float:
        """Seconds between sweeps: shorter without inotify, longer with many waiters,
        so a sweep costs about 1% of a core whatever their number."""
        if self.fd < 0:
            return 0.5
        return max(2.0, len(self.waiters) / 2000)

    async def wait(self, waiter: _Waiter) -> None:
        self._add(waiter)
        try:
            while not waiter.done:
                if self.leader is None:
                    self.leader = waiter
                    try:
                        await self._pump(waiter)
                    finally:
                        self.leader = None
                        self._promote(waiter)
                else:
                    await waiter.wakeup.wait()
                    if not waiter.done:
                        waiter.wakeup = anyio.Event()  # it was asked to lead
        finally:
            self._remove(waiter)

    def _wake(self, waiter: _Waiter) -> None:
        waiter.wake()
        self.pending.pop(waiter, None)

    def _add(self, waiter: _Waiter) -> None:
        self.waiters.add(waiter)
        self.pending[waiter] = None
        if self.fd >= 0:
            wd = int(self.libc.inotify_add_watch(self.fd, os.fsencode(waiter.run_dir), _WATCHED))
            if wd >= 0:
                waiter.wd = wd
                self.by_wd.setdefault(wd, set()).add(waiter)
        # It may have ended before the watch was in place.
        run_dir = waiter.run_dir
        if (run_dir / "exit.json").exists() or not run_dir.is_dir() or not waiter.alive():
            self._wake(waiter)

    def _remove(self, waiter: _Waiter) -> None:
        self.waiters.discard(waiter)
        self.pending.pop(waiter, None)
        sharing = self.by_wd.get(waiter.wd)
        if sharing is not None:
            sharing.discard(waiter)
            if not sharing:
                del self.by_wd[waiter.wd]
                self.libc.inotify_rm_watch(self.fd, waiter.wd)
        if self.leader is None:
            self._promote(waiter)  # it may have been asked to lead, and was cancelled
        if not self.waiters:
            _loops.pop(self.key, None)
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1

    def _promote(self, leaving: _Waiter) -> None:
        """Ask another waiter still waiting to read the descriptor from now on."""
        for other in self.pending:
            if other is not leaving:
                other.wake(done=False)  # still pending: it leads, and waits on
                return

    async def _pump(self, own: _Waiter) -> None:
        """Read inotify events and sweep for everyone until ``own`` is woken."""
        while not own.done:
            now = time.monotonic()
            if now >= self.next_sweep:
                self.next_sweep = now + self.sweep_interval()
                for waiter in list(self.pending):
                    if not waiter.alive():
                        self._wake(waiter)
                continue
            with anyio.move_on_after(self.next_sweep - now):
                if self.fd >= 0:
                    await anyio.wait_readable(self.fd)
                    self._read_events()
                else:
                    await anyio.sleep_forever()

    def _read_events(self) -> None:
        try:
            data = os.read(self.fd, 64 * 1024)
        except BlockingIOError:
            return
        offset = 0
        while offset + _EVENT.size <= len(data):
            wd, mask, _, length = _EVENT.unpack_from(data, offset)
            name = data[offset + _EVENT.size : offset + _EVENT.size + length].rstrip(b"\0")
            offset += _EVENT.size + length
            if mask & _IN_Q_OVERFLOW:  # events were dropped: everyone looks again
                for waiter in list(self.pending):
                    self._wake(waiter)
            elif mask & _GONE or name == _EXIT_NAME:
                for waiter in self.by_wd.get(wd, ()):
                    self._wake(waiter)
                    if mask & _IN_IGNORED:
                        waiter.wd = -1  # the kernel dropped the watch itself
                if mask & _IN_IGNORED:
                    self.by_wd.pop(wd, None)


_loops: dict[object, _Shared] = {}


def _loop_key() -> object:
    """The running event loop (asyncio's, or trio's token), to key its shared state."""
    if sniffio.current_async_library() == "trio":
        import trio

        return trio.lowlevel.current_trio_token()
    return asyncio.get_running_loop()


def _shared() -> _Shared:
    key = _loop_key()
    shared = _loops.get(key)
    if shared is None:
        shared = _loops[key] = _Shared(key)
    return shared


def overflow_waiters() -> int:
    """How many waits share the inotify descriptor now, over all loops (for tests)."""
    return sum(len(shared.waiters) for shared in _loops.values())
