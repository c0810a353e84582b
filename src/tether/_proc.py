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
    try:  # os-level: no buffered file object for a one-read file (it is a hot path)
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    try:
        stat = os.read(fd, 4096)
    except ProcessLookupError:  # ESRCH: it ended between the open and the read
        return None
    finally:
        os.close(fd)
    if not stat:
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


def reaped(pid: int) -> bool:
    """Reap our child ``pid`` if it has ended; True once it is gone (or not ours)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return done != 0


def reap_finished(children: set[int]) -> None:
    """Reap the ended processes among ``children`` (our own) and forget them."""
    for pid in list(children):
        if reaped(pid):
            children.discard(pid)


def _cmdline(pid: int) -> list[bytes] | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().split(b"\0")
    except OSError:
        return None


def not_supervisor_of(pid: int, ticks: int | None, run_dir: str) -> str | None:
    """Why ``pid`` is not the live supervisor of the run in ``run_dir``; None if it is.

    A record names a pid, but a record is only input: before tether signals a
    process it proves the process is that run's supervisor. It must still be the
    process that started at ``ticks`` (so the pid was not reused) and run tether's
    supervisor (its executable, or the Python one's script) for that run folder.
    It need not lead its session yet: a local supervisor leaves its submitter's
    session as its first act (supervise.c, item 0), just after its record is read.
    """
    if pid <= 1:
        return f"the record names pid {pid}, which is never a run's supervisor"
    if ticks is None:
        return f"the record gives no start time for pid {pid}, so its identity cannot be proven"
    fields = _stat(pid)
    if fields is None or fields[_STATE] == b"Z":
        return f"the run's supervisor (pid {pid}) has ended"
    if int(fields[_START]) != ticks:
        return f"pid {pid} is another process now (its start time differs from the record's)"
    args = _cmdline(pid)
    if args is None or _supervised_folder(pid, args) != run_dir.encode():
        return (
            f"pid {pid} is not the supervisor of run folder '{run_dir}' "
            "(its command line is not tether's supervisor naming that folder)"
        )
    return None


def _exe_name(pid: int) -> str:
    try:
        return os.path.basename(os.readlink(f"/proc/{pid}/exe"))
    except OSError:
        return ""


def _supervised_folder(pid: int, args: list[bytes]) -> bytes | None:
    """The run folder argument of a tether supervisor's command line, else None.

    The native one is ``tether-supervise-<digest> RUN_DIR ...``; the Python one is
    ``python -I -S .../_supervisor/fallback.py RUN_DIR ...`` (or ``admit.py``, the
    admission to resource slots that becomes the supervisor once admitted).
    """
    if len(args) > 1 and os.path.basename(args[0]).startswith(b"tether-supervise"):
        return args[1] if _exe_name(pid).startswith("tether-supervise") else None
    scripts = (b"fallback.py", b"admit.py")  # admit.py execs the supervisor once admitted
    if (
        len(args) > 4
        and args[1:3] == [b"-I", b"-S"]
        and any(args[3].endswith(os.path.join(b"_supervisor", name)) for name in scripts)
    ):
        return args[4]
    return None


def find_by_argument(argument: str) -> int | None:
    """The pid of a live session leader whose command line has ``argument`` as one argument.

    Session leaders only, or a supervisor of that folder that has not left its
    submitter's session yet: a run's supervisor leads its session, while the
    processes it starts (which may get the same argument) do not.
    """
    needle = argument.encode()
    with os.scandir("/proc") as entries:  # closed even when we return early
        for entry in entries:
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as handle:
                    args = handle.read().split(b"\0")
            except OSError:
                continue
            pid = int(entry.name)
            fields = _stat(pid) if needle in args else None
            if fields is None or fields[_STATE] == b"Z":
                continue
            if int(fields[_SESSION]) == pid or _supervised_folder(pid, args) == needle:
                return pid
    return None


def session_members(sid: int) -> Iterator[int]:
    """Live pids in session ``sid`` (the run's whole tree), leader and zombies aside."""
    with os.scandir("/proc") as entries:  # closed even when the caller stops early
        for entry in entries:
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
