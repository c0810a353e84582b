"""Pure-Python run supervisor: the same protocol as supervise.c, for machines without a C compiler.

Run as a script (``python -I -S fallback.py RUN_DIR CWD TIMEOUT GRACE CAPTURE ARGV...``)
so it needs nothing but the standard library and starts fast.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from types import FrameType


class _State:
    """What the signal handlers share with the main flow."""

    reason = "exited"  # becomes "timeout" or "cancelled" at most once
    escalated = False  # KILL sent after the grace period
    group = 0  # the run's process group, once it exists


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
    started = time.time()
    state = _State()

    def stop(why: str) -> None:
        if state.reason == "exited":
            state.reason = why
        _kill_group(state.group, signal.SIGTERM)
        signal.setitimer(signal.ITIMER_REAL, max(grace, 0.001))

    def on_alarm(signum: int, frame: FrameType | None) -> None:
        if state.reason == "exited":
            stop("timeout")
        elif not state.escalated:
            state.escalated = True
            _kill_group(state.group, signal.SIGKILL)

    def on_cancel(signum: int, frame: FrameType | None) -> None:
        if state.reason == "exited":
            stop("cancelled")

    signal.pthread_sigmask(
        signal.SIG_BLOCK, {signal.SIGALRM, signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
    )
    signal.signal(signal.SIGALRM, on_alarm)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, on_cancel)

    out = err = None
    if capture == "1":
        out = os.open(os.path.join(run_dir, "stdout"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        err = os.open(os.path.join(run_dir, "stderr"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only os calls until exec
        try:
            # SIGPIPE/SIGXFSZ too: Python ignores them, and exec keeps ignored signals.
            for signum in (
                signal.SIGALRM,
                signal.SIGTERM,
                signal.SIGINT,
                signal.SIGHUP,
                signal.SIGPIPE,
                signal.SIGXFSZ,
            ):
                signal.signal(signum, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, set())
            os.setpgid(0, 0)
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
    if timeout > 0:
        signal.setitimer(signal.ITIMER_REAL, timeout)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    os.close(write_end)
    for fd in (out, err):
        if fd is not None:
            os.close(fd)
    failure = os.read(read_end, 64)
    os.close(read_end)

    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    _kill_group(pid, signal.SIGKILL if state.reason != "exited" else signal.SIGTERM)
    _, status = os.waitpid(pid, 0)
    signal.pthread_sigmask(
        signal.SIG_BLOCK, {signal.SIGALRM, signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
    )

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
    elif os.WIFSIGNALED(status):
        outcome.update(exit_code=-os.WTERMSIG(status), signal=os.WTERMSIG(status), error=None)
    else:
        outcome.update(exit_code=os.WEXITSTATUS(status), signal=None, error=None)
    outcome["supervisor"] = "python"
    tmp = os.path.join(run_dir, ".exit.json.tmp")
    with open(tmp, "w") as handle:
        json.dump(outcome, handle)
    os.replace(tmp, os.path.join(run_dir, "exit.json"))
    return 0


def _kill_group(group: int, signum: int) -> None:
    if group > 0:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signum)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
