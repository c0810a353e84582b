"""The function the contract suite's Call harnesses run (importable by name in workers)."""

from __future__ import annotations

import sys
import time


def contract_call(lines: list[str], duration: float, exit_code: int) -> str:
    """Print ``lines`` over ``duration`` seconds, then exit with ``exit_code``.

    It sleeps in short slices, as Monte Carlo loops compute in short steps: a call
    in a thread can only be stopped between Python bytecodes (see the inline backend).
    """
    steps = max(len(lines), 1)
    for index in range(steps):
        if index < len(lines):
            print(lines[index], flush=True)
        _sleep(duration / steps)
    if exit_code:
        sys.exit(exit_code)
    return "done"


def _sleep(seconds: float) -> None:
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        time.sleep(min(left, 0.02))
