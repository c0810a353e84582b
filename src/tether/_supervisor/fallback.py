"""Pure-Python run supervisor: the same protocol as supervise.c, for machines without a C compiler.

Run as a script (``python -I -S fallback.py RUN_DIR CWD TIMEOUT GRACE CAPTURE ARGV...``)
so it needs nothing but the standard library and starts fast. The protocol (gate on
fd 3, reserved outcome file, child subreaper, nothing left running when the outcome
is recorded) is described at the top of supervise.c.

One addition of this supervisor alone: with ``TETHER_SUPERVISOR_OWNER=<pid>`` in its
environment (the Dask backend sets it for runs of an embedded cluster) the run is
stopped, as by a cancel, when that process ends, even by SIGKILL: the runs of a
cluster that lives inside a process end with that process.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import resource
import select
import signal
import sys
import time
from types import FrameType

GATE_FD = 3
RESERVE = 4096
_PR_SET_CHILD_SUBREAPER = 36
_SIGNALS = {signal.SIGALRM, signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
#: What a terminal sends a process group (Ctrl-C, hang-up, Ctrl-\, Ctrl-Z, tty I/O).
_TERMINAL = {
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGTSTP,
    signal.SIGTTIN,
    signal.SIGTTOU,
}


class _State:
    """What the signal handlers share with the main flow."""

    reason = "exited"  # becomes "timeout" or "cancelled" at most once
    escalated = False  # KILL sent after the grace period
    settled = False  # the command has ended: a cancel now means "kill the rest at once"
    group = 0  # the run's process group, once it exists


def _own_session() -> None:
    """Protocol item 0 (see supervise.c): a session of our own, when tether asks for it.

    Called with the signals blocked. Those a terminal sent the submitter's group
    before we left it are dropped; those a process sent us stay pending.
    """
    if os.environ.pop("TETHER_SUPERVISOR_SETSID", None) != "1":
        return
    try:
        os.setsid()
    except OSError:
        return  # a session leader already
    again = []
    while (info := signal.sigtimedwait(_TERMINAL, 0)) is not None:
        if info.si_code <= 0:  # kill(), sigqueue(), tkill(): sent by a process
            again.append(info.si_signo)
    for signum in again:
        os.kill(os.getpid(), signum)


def _gate_open(run_dir: str) -> bool:
    """Wait for tether's go-ahead; False if the submitter died before writing the record."""
    try:
        go = os.read(GATE_FD, 1)
    except OSError:
        return True  # started by hand, without a gate
    finally:
        with contextlib.suppress(OSError):
            os.close(GATE_FD)
    if go == b"g":
        return True
    with contextlib.suppress(OSError):
        os.unlink(os.path.join(run_dir, "handle.json"))
    return False


def _make_reserve(run_dir: str) -> int | None:
    path = os.path.join(run_dir, ".exit.json.tmp")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError:
        return None
    try:
        os.write(fd, b" " * RESERVE)
        # The blocks are the file's now, without an fsync's wait for the disk.
        with contextlib.suppress(OSError):  # EOPNOTSUPP: the dirty pages hold the space
            os.posix_fallocate(fd, 0, RESERVE)
    except OSError:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
        return None
    return fd


def _has_children() -> bool:
    """True while this process has any child, live or unreaped. A subreaper has no
    descendant at all without a child (an orphan is reparented to it before its
    dying parent can be reaped): one syscall instead of reading /proc."""
    try:
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return False
    return True


def _descendants() -> list[int]:
    """Live (not zombie) descendants of this process, found through /proc."""
    parents: dict[int, int] = {}
    zombies: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()
        parents[int(entry)] = int(fields[1])
        if fields[0] == b"Z":
            zombies.add(int(entry))
    mine = {os.getpid()}
    changed = True
    while changed:
        changed = False
        for pid, ppid in parents.items():
            if pid not in mine and ppid in mine:
                mine.add(pid)
                changed = True
    mine.discard(os.getpid())
    return [pid for pid in mine if pid not in zombies]


def _signal_descendants(signum: int) -> int:
    """Send ``signum`` (0: none) to every live descendant; return how many live."""
    count = 0
    for pid in _descendants():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)
            count += 1
    return count


def _disk_full(run_dir: str) -> bool:
    try:
        stats = os.statvfs(run_dir)
    except OSError:
        return False
    return stats.f_bavail == 0 or (stats.f_files > 0 and stats.f_favail == 0)


def main(argv: list[str]) -> int:
    """Run ``argv[5:]`` supervised; record the outcome in RUN_DIR/exit.json."""
    if len(argv) < 6:
        print("usage: fallback.py RUN_DIR CWD TIMEOUT GRACE CAPTURE ARGV...", file=sys.stderr)
        return 2
    run_dir, cwd, timeout, grace, capture = (
        argv[0],
        argv[1],
        float(argv[2]),
        float(argv[3]),
        argv[4],
    )
    command = argv[5:]
    state = _State()

    def stop(why: str) -> None:
        if state.reason == "exited":
            state.reason = why
        _kill_group(state.group, signal.SIGTERM)
        signal.setitimer(signal.ITIMER_REAL, max(grace, 0.001))

    def on_alarm(signum: int, frame: FrameType | None) -> None:
        if state.reason == "exited" and not state.settled:
            stop("timeout")
        elif not state.escalated:
            state.escalated = True
            if not state.settled:
                _kill_group(state.group, signal.SIGKILL)

    def on_cancel(signum: int, frame: FrameType | None) -> None:
        if state.settled:
            state.escalated = True
        elif state.reason == "exited":
            stop("cancelled")

    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    signal.signal(signal.SIGALRM, on_alarm)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, on_cancel)
    _own_session()
    # The gate first, before this process opens any file: started without one (fd 3
    # closed), a new pipe would take fd 3 and be mistaken for it.
    if not _gate_open(run_dir):
        return 4
    owner = _owner_fd()
    if owner == -1:
        return 4  # the process whose runs these are is gone already: do not start
    # Handlers run between bytecodes; the wakeup pipe makes them end a select().
    # (The signals stay blocked until the command is started.)
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    os.set_blocking(wake_read, False)
    signal.set_wakeup_fd(wake_write, warn_on_full_buffer=False)
    started = time.time()
    reserve = _make_reserve(run_dir)
    if ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        print("tether-supervise: cannot become a child subreaper", file=sys.stderr)
        return 3

    out = err = None
    if capture == "1":
        out = os.open(os.path.join(run_dir, "stdout"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        err = os.open(os.path.join(run_dir, "stderr"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    cgroup, rlimit = _take_limits()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only os calls until exec
        try:
            # SIGPIPE/SIGXFSZ too: Python ignores them, and exec keeps ignored signals.
            for signum in (*_SIGNALS, signal.SIGPIPE, signal.SIGXFSZ):
                signal.signal(signum, signal.SIG_DFL)
            signal.set_wakeup_fd(-1)
            signal.pthread_sigmask(signal.SIG_SETMASK, set())
            os.setpgid(0, 0)
            _apply_limits(cgroup, rlimit)
            if out is not None and err is not None:
                os.dup2(out, 1)
                os.dup2(err, 2)
            try:
                os.chdir(cwd)
            except OSError as exc:
                os.write(write_end, f"-{exc.errno}".encode())
                os._exit(127)
            try:
                os.execvp(command[0], command)
            except OSError as exc:
                os.write(write_end, str(exc.errno).encode())
        finally:
            os._exit(127)
    with contextlib.suppress(OSError):  # the child already did it, or already exec'd
        os.setpgid(pid, pid)
    state.group = pid
    pidfd = os.pidfd_open(pid)
    if timeout > 0:
        signal.setitimer(signal.ITIMER_REAL, timeout)
    os.close(write_end)
    for fd in (out, err):
        if fd is not None:
            os.close(fd)
    failure = os.read(read_end, 64)
    os.close(read_end)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())

    termed = False
    while True:  # the command runs: act on cancels and the timeout, for the whole tree
        if state.reason != "exited" and not termed:
            _signal_descendants(signal.SIGTERM)
            termed = True
        if state.escalated:
            _signal_descendants(signal.SIGKILL)
        watched = [pidfd, wake_read] if owner is None else [pidfd, wake_read, owner]
        ready, _, _ = select.select(watched, [], [], 0.05 if state.escalated else None)
        if owner is not None and owner in ready:
            os.close(owner)
            owner = None
            stop("cancelled")
        if wake_read in ready:
            with contextlib.suppress(BlockingIOError):
                os.read(wake_read, 512)
        if pidfd in ready:
            break
    state.settled = True
    if state.reason != "exited":
        state.escalated = True
    signal.setitimer(signal.ITIMER_REAL, max(grace, 0.001))

    status: int | None = None
    sent_term = False
    while True:  # the command ended: stop what is left (TERM, KILL after the grace)
        with contextlib.suppress(ChildProcessError):
            while True:
                reaped, code = os.waitpid(-1, os.WNOHANG)
                if reaped == 0:
                    break
                if reaped == pid:
                    status = code
        if status is not None and not _has_children():
            break  # the usual end: nothing left to stop
        if state.escalated:
            live = _signal_descendants(signal.SIGKILL)
        else:
            live = _signal_descendants(0 if sent_term else signal.SIGTERM)
        sent_term = True
        if live == 0 and status is not None:
            break
        select.select([wake_read], [], [], 0.05)
        with contextlib.suppress(BlockingIOError):
            os.read(wake_read, 512)
    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)

    outcome: dict[str, object] = {"reason": state.reason, "started": started, "ended": time.time()}
    if failure:
        code = int(failure)
        what = (
            f"cannot enter working directory '{cwd}'"
            if code < 0
            else f"cannot execute '{command[0]}'"
        )
        outcome.update(
            reason="exec_failed",
            exit_code=127,
            signal=None,
            error=f"{what}: {os.strerror(abs(code))}",
        )
    elif status is None:  # never: the loop above ends only once the command is reaped
        outcome.update(exit_code=None, signal=None, error="the command's status was lost")
    elif os.WIFSIGNALED(status):
        outcome.update(exit_code=-os.WTERMSIG(status), signal=os.WTERMSIG(status), error=None)
    else:
        outcome.update(exit_code=os.WEXITSTATUS(status), signal=None, error=None)
    outcome["disk_full"] = _disk_full(run_dir)
    outcome["supervisor"] = "python"
    _record(run_dir, reserve, (json.dumps(outcome) + "\n").encode())
    return 0


def _record(run_dir: str, reserve: int | None, data: bytes) -> None:
    """Write the outcome over the reserved blocks (no allocation on a full disk), rename it."""
    tmp = os.path.join(run_dir, ".exit.json.tmp")
    fd = reserve
    if fd is None:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.pwrite(fd, data, 0)
        with contextlib.suppress(OSError):  # blanks after the JSON are still JSON
            os.ftruncate(fd, len(data))
    finally:
        os.close(fd)
    os.replace(tmp, os.path.join(run_dir, "exit.json"))


def _owner_fd() -> int | None:
    """A pidfd of the process named by ``TETHER_SUPERVISOR_OWNER`` (taken out of the
    environment, so the command does not inherit it); None without one, -1 if gone."""
    owner = os.environ.pop("TETHER_SUPERVISOR_OWNER", None)
    if not owner:
        return None
    try:
        return os.pidfd_open(int(owner))
    except (ProcessLookupError, ValueError):
        return -1


def _take_limits() -> tuple[str | None, int]:
    """The command's memory limit asked by the admission step (see supervise.c, item 4),
    taken out of the environment so the command does not inherit it."""
    cgroup = os.environ.pop("TETHER_RUN_CGROUP", None)
    rlimit = os.environ.pop("TETHER_RUN_RLIMIT_DATA", None)
    return cgroup, int(rlimit) if rlimit and rlimit.isdigit() else 0


def _apply_limits(cgroup: str | None, rlimit: int) -> None:
    """In the child before exec: join the cgroup, else limit the data segment."""
    joined = False
    if cgroup:
        try:
            with open(os.path.join(cgroup, "cgroup.procs"), "w") as handle:
                handle.write("0")
            joined = True
        except OSError:
            pass
    if not joined and rlimit > 0:
        resource.setrlimit(resource.RLIMIT_DATA, (rlimit, rlimit))


def _kill_group(group: int, signum: int) -> None:
    if group > 0:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signum)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
