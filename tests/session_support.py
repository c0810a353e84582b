"""Start a supervisor the way a terminal's signals can reach it: for test_local_session.py.

Usage: ``python session_support.py SUPERVISOR_JSON RUN_DIR HOW READY_FD``

This process leads a session whose controlling terminal is a pty (its slave is fd 0);
its child, in the terminal's foreground process group, blocks the signals tether's
submitter blocks, gets a SIGINT while blocked (HOW ``terminal``: the test types Ctrl-C
on the pty's master once told, through READY_FD, that the child is waiting;
HOW ``process``: it sends one to itself), and then execs the supervisor with
``TETHER_SUPERVISOR_SETSID=1``, a gate already open and ``python -c`` as its command,
which prints its session id and whether the variable reached it. The pending SIGINT
goes through exec, as it would in the moment between posix_spawn and the
supervisor's own setsid.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

from tether.backends.local._common import _SPAWN_MASK

MASK = set(_SPAWN_MASK)  # what tether's submitter blocks in a new supervisor
PROBE = "import os; print(os.getsid(0), os.environ.get('TETHER_SUPERVISOR_SETSID'))"


def child(supervisor: list[str], run_dir: str, how: str, ready: int) -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, MASK)
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # blocked, so it stays pending
    if how == "process":
        os.kill(os.getpid(), signal.SIGINT)
    else:
        os.write(ready, b"r")
    deadline = time.monotonic() + 30
    while signal.SIGINT not in signal.sigpending():
        if time.monotonic() > deadline:
            os._exit(5)
        time.sleep(0.01)
    gate_read, gate_write = os.pipe()
    os.write(gate_write, b"g")
    os.dup2(gate_read, 3)
    env = {**os.environ, "TETHER_SUPERVISOR_SETSID": "1"}
    argv = [*supervisor, run_dir, run_dir, "0", "1", "1", sys.executable, "-c", PROBE]
    os.execve(supervisor[0], argv, env)


def main() -> int:
    supervisor, run_dir, how, ready = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    os.setsid()
    os.close(os.open(os.ttyname(0), os.O_RDWR))  # the pty becomes our controlling terminal
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    pid = os.fork()
    if pid == 0:
        child(supervisor, run_dir, how, int(ready))
    os.close(int(ready))
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main())
