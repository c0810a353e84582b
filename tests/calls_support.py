"""Module-level functions that Call tests run: importable by name in worker processes
(``"tests.calls_support:square"``)."""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any


def square(x: int) -> int:
    return x * x


def add(a: int, b: int = 0, *, c: int = 0) -> int:
    return a + b + c


def echo(*args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return args, kwargs


def fail(message: str) -> None:
    raise ValueError(message)


def fail_if(x: int, bad: int) -> int:
    if x == bad:
        raise ValueError(f"bad item {x}")
    return x


def exit_with(code: int) -> None:
    sys.exit(code)


def die() -> None:
    os._exit(7)


def sleep_then(seconds: float, value: Any = None) -> Any:
    time.sleep(seconds)
    return value


def python_busy(seconds: float) -> str:
    """Runs Python bytecode until ``seconds`` pass (so a thread can be interrupted)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        sum(range(100))
    return "finished"


def slow_unless_fail(x: int) -> int:
    """Item 0 fails at once; the others run Python code for 30 s."""
    if x == 0:
        raise ValueError("fast failure")
    python_busy(30)
    return x


def printer(lines: int, pause: float = 0.0) -> int:
    for i in range(lines):
        print(f"line {i}", flush=True)
        if pause:
            time.sleep(pause)
    print("to stderr", file=sys.stderr)
    return lines


def getenv(name: str) -> str | None:
    return os.environ.get(name)


def pid() -> int:
    return os.getpid()


def unpicklable_value() -> Any:
    return threading.Lock()


def raise_worker_only() -> None:
    """Raise an exception whose class lives in a module only the call's process has:
    it pickles there, but cannot be unpickled anywhere else."""
    import types

    module = types.ModuleType("tether_worker_only")
    sys.modules[module.__name__] = module

    class WorkerOnlyError(Exception):
        pass

    WorkerOnlyError.__module__ = module.__name__
    WorkerOnlyError.__qualname__ = "WorkerOnlyError"
    module.WorkerOnlyError = WorkerOnlyError  # type: ignore[attr-defined]
    raise WorkerOnlyError("cannot come home")


def raise_unpicklable() -> None:
    """Raise an exception that cannot be pickled at all (it holds a lock)."""
    raise ValueError(threading.Lock())


def mc_worker(seed: Any, x: float) -> list[float]:
    """A Monte Carlo member: a few draws from its own generator, shifted by ``x``."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return [float(v) + x for v in rng.normal(size=3)]


def seed_type(seed: Any) -> str:
    return type(seed).__name__


# -- concurrency counting (threads mode) --------------------------------------------------

_lock = threading.Lock()
_active = 0
_peak = 0


def reset_concurrency() -> None:
    global _active, _peak
    with _lock:
        _active = 0
        _peak = 0


def peak_concurrency() -> int:
    return _peak


def counted_sleep(x: int, seconds: float = 0.05) -> int:
    global _active, _peak
    with _lock:
        _active += 1
        _peak = max(_peak, _active)
    try:
        time.sleep(seconds)
    finally:
        with _lock:
            _active -= 1
    return x


def kill_self() -> None:
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


def sleep_unless_fail(x: int, seconds: float = 20.0) -> int:
    """Item 0 fails after a moment; the others sleep ``seconds`` (blocked in C)."""
    if x == 0:
        time.sleep(0.3)
        raise ValueError("fast failure")
    time.sleep(seconds)
    return x


def record_run(log: str, x: int) -> int:
    """``x * 10``, leaving a line in ``log`` each time it really runs."""
    with open(log, "a") as handle:
        handle.write(f"{x}\n")
    return x * 10


class Halt(BaseException):
    """Not an Exception: what a call might raise to stop hard (like KeyboardInterrupt)."""


def raise_base() -> None:
    raise Halt("halt")


def later(x: int, total: int = 5, unit: float = 0.05) -> int:
    """``x``, returned after ``(total - x) * unit`` seconds: later items finish first."""
    time.sleep(max(0, total - x) * unit)
    return x


class CustomError(Exception):
    """An exception class of this module (importable everywhere)."""


def raise_custom(message: str) -> None:
    raise CustomError(message)


def stubborn_sleep(pidfile: str, seconds: float) -> str:
    """Ignore SIGTERM, record this process's pid, then sleep (a call only KILL stops)."""
    import os
    import signal
    import time

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with open(pidfile, "w") as handle:
        handle.write(str(os.getpid()))
    time.sleep(seconds)
    return "finished"


class Adder:
    """A callable object: ``Adder(10)(5) == 15``."""

    def __init__(self, base: int) -> None:
        self.base = base

    def __call__(self, x: int) -> int:
        return self.base + x

    def times(self, x: int) -> int:
        return self.base * x
