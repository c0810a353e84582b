"""Helpers shared by backends that give each run its own folder."""

from __future__ import annotations

import codecs
import contextlib
import functools
import os
import random
import re
import shutil
import signal
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ._files import make_private_dir
from .errors import SubmitError

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")

#: Files tether itself writes into a run folder; never reported as outputs.
RESERVED = frozenset(
    {
        "stdout",
        "stderr",
        "exit.json",
        "handle.json",
        "outputs",
        "cancelled.json",
        "stop.json",
        ".watchdog.log",
        "call.pkl",
        "outcome.pkl",
        ".tether-outcome.pkl",
        "outcome.pkl.sig",
        ".tether-outcome.pkl.sig",
        ".exit.json.tmp",
        ".handle.json.tmp",
        "slots.json",
        "slots-request.json",
    }
)


@dataclass(frozen=True)
class RunSummary:
    """What a listing shows of a run: its state, and once ended its exit code and error."""

    state: str
    exit_code: int | None = None
    error: str | None = None


def new_run_id(name: str) -> str:
    """A sortable, unique run id: ``<name>-<UTC time>-<random>``.

    On the path of every submit, so the parts are cached: ``random`` is reseeded
    in forked children, which keeps ids unique across processes. 48 random bits:
    at 2,000 submits a second (a loop of tether's can do that) two ids of the same
    second collide once in about 10^8 seconds; with 32 bits it was once an hour.
    """
    return f"{_slug(name)}-{_stamp(int(time.time()))}-{random.getrandbits(48):012x}"


def chosen_run_id(run_id: str | None, name: str) -> str:
    """``run_id`` when the caller chose one (checked to be a safe folder name), else a new one."""
    if run_id is None:
        return new_run_id(name)
    if not run_id or _UNSAFE.search(run_id) or run_id.startswith(".") or len(run_id) > 200:
        raise SubmitError(
            f"run_id {run_id!r} is not a safe folder name: use letters, digits, '.', '_' and '-'"
        )
    return run_id


@functools.lru_cache(maxsize=256)
def _slug(name: str) -> str:
    return _UNSAFE.sub("-", name).strip("-.").lower()[:40] or "run"


@functools.lru_cache(maxsize=4)
def _stamp(second: int) -> str:
    return datetime.fromtimestamp(second, UTC).strftime("%Y%m%d-%H%M%S")


def make_run_dir(runs_dir: Path, run_id: str) -> Path:
    """Create the run's private folder (mode 0700) under ``runs_dir``."""
    run_dir = runs_dir / run_id
    try:
        try:
            os.mkdir(run_dir, 0o700)  # the runs folder is usually there already
        except FileNotFoundError:
            make_private_dir(runs_dir)
            os.mkdir(run_dir, 0o700)
    except FileExistsError as exc:
        raise SubmitError(
            f"Run folder '{run_dir}' already exists: submit with another run_id."
        ) from exc
    except OSError as exc:
        raise SubmitError(
            f"Cannot create a run folder in '{runs_dir}': {exc.strerror}; "
            "set runs_dir to a writable folder."
        ) from exc
    return run_dir


def check_inputs_reachable(name: str, inputs: list[Path], workdir: Path | None) -> None:
    """Refuse inputs a command running in ``workdir`` could not read by their names.

    Inputs are copied into the run folder; with a ``workdir`` (or ``working_dir``)
    the command runs elsewhere, where an input is readable by its name only if it
    is already there. Refused up front, before anything starts.
    """
    if workdir is None:
        return
    for source in inputs:
        source = source.expanduser().absolute()
        with contextlib.suppress(OSError):
            if (workdir / source.name).resolve() == source.resolve():
                continue
        raise SubmitError(
            f"Job {name!r}: input '{source}' is copied into the run folder, but the command "
            f"runs in '{workdir}' (workdir/working_dir), where '{source.name}' is not: move "
            f"the input into that folder, or drop workdir so the command runs in the run "
            "folder beside its inputs."
        )


def stage_inputs(inputs: list[Path], run_dir: Path) -> None:
    """Copy input files and folders into the run folder, by their base names."""
    for source in inputs:
        source = source.expanduser()
        if not source.exists():
            raise SubmitError(f"Input '{source}' does not exist: fix the job's inputs.")
        target = run_dir / source.name
        if source.name in RESERVED:
            raise SubmitError(
                f"Input '{source}' is named like a file tether writes ({source.name}): rename it."
            )
        if source.is_dir():
            shutil.copytree(source, target, symlinks=True)
        else:
            shutil.copy2(source, target)


def collect_outputs(patterns: list[str], workdir: Path, run_dir: Path) -> list[Path]:
    """Files matching ``patterns`` in ``workdir``, gathered into the run folder.

    When the run worked in its own folder the files are listed where they are;
    otherwise they are copied (atomically, so concurrent collectors agree) into
    ``run_dir/outputs`` keeping their relative paths.
    """
    found: list[Path] = []
    seen: set[Path] = set()
    inside = workdir.resolve() == run_dir.resolve()
    for pattern in patterns:
        for match in sorted(workdir.glob(pattern)):
            if not match.is_file() or match in seen:
                continue
            relative = match.relative_to(workdir)
            if inside and relative.parts[0] in RESERVED:
                continue
            seen.add(match)
            if inside:
                found.append(match)
                continue
            target = run_dir / "outputs" / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
            os.close(fd)
            try:
                shutil.copy2(match, tmp)
                os.replace(tmp, target)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
            found.append(target)
    return found


def failure_reason(code: Any, stderr: Path | None) -> str:
    """Why a command failed, in words: its exit status and its last line of stderr."""
    if isinstance(code, int) and code < 0:
        try:
            text = f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            text = f"killed by signal {-code}"
    elif code == 127:
        text = "exit code 127 (command not found?)"
    else:
        text = f"exit code {code}"
    tail = last_line(stderr) if stderr else ""
    return f"{text}: {tail}" if tail else text


def last_line(path: Path, limit: int = 4096) -> str:
    """The last non-empty line of a (log) file, or ''."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - limit))
            tail = handle.read().decode(errors="replace")
    except OSError:
        return ""
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    return lines[-1] if lines else ""


async def tail_lines(
    path: Path, *, follow: bool = False, wait_more: Callable[[], Awaitable[bool]] | None = None
) -> AsyncIterator[str]:
    """Yield the lines of a growing log file.

    Without ``follow`` read what is there and stop. With it, when no new bytes are
    there, await ``wait_more()``: it returns after a short wait or as soon as the
    run ends, and says whether the run has ended; the rest is then read and the
    iteration stops.
    """
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    buffer = ""
    position = 0
    ended = not follow
    while True:
        try:
            with open(path, "rb") as handle:
                handle.seek(position)
                chunk = handle.read(1 << 20)
        except FileNotFoundError:
            chunk = b""
        position += len(chunk)
        if chunk:
            buffer += decoder.decode(chunk)
            *lines, buffer = buffer.split("\n")
            for line in lines:
                yield line
            continue
        if ended or wait_more is None:
            break
        ended = await wait_more()
    buffer += decoder.decode(b"", final=True)
    if buffer:
        yield buffer
