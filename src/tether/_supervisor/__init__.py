"""Finding (and on first use, building) the per-run supervisor of the local backend.

Every local run is watched by a tiny supervisor process that outlives the Python
process that started it: it enforces the timeout, turns a cancel into TERM-then-KILL
of the run's process group, and records the exit status in the run folder. The
native one (``supervise.c``) is compiled once per machine into the user cache
folder; where no C compiler exists, a pure-Python one with the same protocol is used.
Set ``TETHER_SUPERVISOR`` to ``c`` or ``python`` to force one.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from importlib import resources
from pathlib import Path

from .._files import cache_home, make_private_dir
from ..errors import BackendUnavailableError

_lock = threading.Lock()
_cached: dict[str, list[str]] = {}


def _source() -> bytes:
    return resources.files(__package__).joinpath("supervise.c").read_bytes()


def python_supervisor() -> list[str]:
    """argv prefix of the pure-Python supervisor (stdlib only, isolated mode)."""
    script = Path(__file__).with_name("fallback.py")
    return [sys.executable, "-I", "-S", str(script)]


def native_supervisor() -> list[str]:
    """argv prefix of the compiled supervisor, building it on first use.

    Raises:
        BackendUnavailableError: no C compiler, or the build failed.
    """
    source = _source()
    # Static when the C library allows it: it starts in half the time; with musl
    # (musl-gcc, from Debian's musl-tools) when there, as it starts faster still
    # (a 90 KB binary: 0.09 ms less CPU per run than static glibc, measured). The
    # toolchain is part of the cache key, so installing musl-tools later takes effect.
    musl = None if os.environ.get("CC") else shutil.which("musl-gcc")
    toolchain = b"|musl" if musl else b"|cc"
    recipe = source + platform.machine().encode() + b"|O2,static-first" + toolchain
    digest = hashlib.sha256(recipe).hexdigest()[:16]
    target = cache_home() / "bin" / f"tether-supervise-{digest}"
    if os.access(target, os.X_OK):
        return [str(target)]
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        raise BackendUnavailableError(
            "No C compiler found to build tether's run supervisor: install one (cc/gcc) "
            "or set TETHER_SUPERVISOR=python."
        )
    make_private_dir(target.parent)  # what runs every job: nobody else may write here
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        src = Path(tmp) / "supervise.c"
        src.write_bytes(source)
        binary = Path(tmp) / "tether-supervise"
        builds = [[compiler, "-O2", "-static"], [compiler, "-O2"]]
        if musl:
            builds.insert(0, [musl, "-O2", "-static"])
        for build in builds:
            try:
                proc = subprocess.run(
                    [*build, "-o", str(binary), str(src)],
                    capture_output=True,
                    text=True,
                    check=False,
                )
            except OSError as exc:
                if build[0] == musl:
                    continue  # a broken musl-gcc: the system compiler then
                raise BackendUnavailableError(
                    f"Cannot run the C compiler {compiler!r} ({exc.strerror}): install one "
                    "or set TETHER_SUPERVISOR=python."
                ) from exc
            if proc.returncode == 0:
                break
        if proc.returncode != 0:
            detail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise BackendUnavailableError(
                f"Building tether's run supervisor with {compiler} failed: {detail}"
            )
        os.replace(binary, target)  # atomic: concurrent builders race harmlessly
    return [str(target)]


def _choice() -> str:
    return os.environ.get("TETHER_SUPERVISOR", "auto").strip().lower() or "auto"


def cached_supervisor() -> list[str] | None:
    """The supervisor argv if already resolved in this process (no I/O), else None."""
    return _cached.get(_choice())


def supervisor_argv() -> list[str]:
    """The supervisor to use, per ``TETHER_SUPERVISOR`` (auto, c or python); cached."""
    choice = _choice()
    with _lock:
        if choice in _cached:
            return _cached[choice]
        if choice == "python":
            argv = python_supervisor()
        elif choice == "c":
            argv = native_supervisor()
        elif choice == "auto":
            try:
                argv = native_supervisor()
            except BackendUnavailableError:
                argv = python_supervisor()
        else:
            raise BackendUnavailableError(
                f"TETHER_SUPERVISOR={choice!r} is not one of auto, c, python."
            )
        _cached[choice] = argv
        return argv


def admission_argv() -> list[str]:
    """argv prefix of the admission step to resource slots (``admit.py``, stdlib only).

    It takes the supervisor's arguments, waits for the run's slots and then execs
    the supervisor named in the run's request; see its module docstring.
    """
    script = Path(__file__).with_name("admit.py")
    return [sys.executable, "-I", "-S", str(script)]
