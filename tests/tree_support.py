"""A process tree that tries every way out of its run: ``python tree_support.py KINDS PIDFILE``.

KINDS is a comma-separated list of ``child`` (a plain child), ``setpgid`` (its own
process group), ``setsid`` (its own session), ``double_fork`` (a daemon: fork, exit,
setsid in the grandchild) and ``ignore_term`` (a child that ignores SIGTERM). Every
process of the tree appends ``PID START_TICKS`` to PIDFILE, then lingers; the top
process ignores SIGTERM too, so only SIGKILL ends the whole tree.
"""

from __future__ import annotations

import os
import signal
import sys
import time


def _record(path: str) -> None:
    with open(f"/proc/{os.getpid()}/stat", "rb") as handle:
        stat = handle.read()
    ticks = stat[stat.rindex(b")") + 2 :].split()[19].decode()
    with open(path, "a") as handle:
        handle.write(f"{os.getpid()} {ticks}\n")


def _linger(ignore_term: bool) -> None:
    if ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        time.sleep(1000)


def _spawn(kind: str, path: str) -> None:
    pid = os.fork()
    if pid:
        if kind == "double_fork":
            os.waitpid(pid, 0)  # the intermediate exits at once: its child is orphaned
        return
    try:
        if kind == "setsid":
            os.setsid()
        elif kind == "setpgid":
            os.setpgid(0, 0)
        elif kind == "double_fork":
            if os.fork():
                os._exit(0)
            os.setsid()
        _record(path)
        _linger(kind in ("ignore_term", "double_fork"))
    finally:
        os._exit(0)


def main() -> None:
    kinds, path = sys.argv[1].split(","), sys.argv[2]
    for kind in kinds:
        _spawn(kind, path)
    _record(path)
    _linger(True)


if __name__ == "__main__":
    main()
