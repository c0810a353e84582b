"""Linux process plumbing for detached runs: identity, event-driven exit, tree kill."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator

import anyio

# Indexes into _stat() fields (proc(5) numbering minus 3: fields 1-2 are cut off).
_STATE, _SESSION, _START = 0, 3, 19


def _stat(pid: int) -> list[bytes] | None:
    """/proc/PID/stat from field 3 (state) on, or None if the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # Field 2 (comm) may hold spaces and parentheses: split after its last ')'.
    return stat[stat.rindex(b")") + 2 :].split()


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None if it is gone.

    Together with the pid this identifies a process across pid reuse.
    """
    fields = _stat(pid)
    return None if fields is None else int(fields[_START])


def is_running(pid: int, ticks: int | None) -> bool:
    """True if ``pid`` is alive (not a zombie) and, given ``ticks``, the same process."""
    fields = _stat(pid)
    if fields is None or fields[_STATE] == b"Z":
        return False
    return ticks is None or int(fields[_START]) == ticks


def open_pidfd(pid: int, ticks: int | None) -> int | None:
    """A pidfd for the process ``pid`` if it is still the one that started at ``ticks``."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return None
    # The pidfd pins the process: if its start time matches now, it is ours.
    if ticks is not None and start_ticks(pid) != ticks:
        os.close(fd)
        return None
    return fd


async def wait_pidfd(fd: int) -> None:
    """Return when the process behind ``fd`` has exited (no thread, no poll loop)."""
    await anyio.wait_readable(fd)


def reap(pid: int) -> None:
    """Collect the exit status of our own child, if it is one, so no zombie stays."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def find_by_argument(argument: str) -> int | None:
    """The pid of a live session leader whose command line has ``argument`` as one argument.

    Session leaders only: a run's supervisor leads its session, while the processes
    it starts (which may get the same argument) do not.
    """
    needle = argument.encode()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as handle:
                args = handle.read().split(b"\0")
        except OSError:
            continue
        pid = int(entry.name)
        fields = _stat(pid) if needle in args else None
        if fields is not None and fields[_STATE] != b"Z" and int(fields[_SESSION]) == pid:
            return pid
    return None


def session_members(sid: int) -> Iterator[int]:
    """Live pids in session ``sid`` (the run's whole tree), leader and zombies aside."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if pid == sid:
            continue
        fields = _stat(pid)
        if fields is not None and int(fields[_SESSION]) == sid and fields[_STATE] != b"Z":
            yield pid


def kill_session(sid: int, signum: int = signal.SIGKILL) -> int:
    """Signal every process of session ``sid`` but its leader; return how many."""
    count = 0
    for pid in list(session_members(sid)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)
            count += 1
    return count


async def wait_session_gone(sid: int, timeout: float = 2.0) -> bool:
    """Wait until session ``sid`` has no live members (killed ones take a moment to go).

    Returns False if some are still there after ``timeout`` seconds.
    """
    with anyio.move_on_after(timeout):
        for pid in list(session_members(sid)):
            fd = open_pidfd(pid, None)
            if fd is None:
                continue  # gone already
            try:
                await wait_pidfd(fd)
            finally:
                os.close(fd)
        return True
    return False
