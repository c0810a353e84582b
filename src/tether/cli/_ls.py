"""``tether ls``: the runs found in a runs folder, with their state and age.

Built to stay quick over tens of thousands of runs: one ``os.scandir`` of the folder,
one ``stat`` and one read of each ``handle.json``, and for the local backend's runs a
summary from the run's own files (``tether.backends.local._listing``: no handle, no
pydantic model, one look at ``/proc`` for all runs). Only the runs a summary cannot
tell (other backends, ``Call`` jobs, runs with resource slots) get a real handle,
loaded and refreshed as ``tether status`` does, a few at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import _plugins
from .._files import MAX_FILE_SIZE, default_runs_dir
from .._runs import RunSummary
from ..errors import ConfigError, TetherError
from ..records import parse_record, read_record
from ._render import table, write_lines

if TYPE_CHECKING:
    import anyio

EXIT_OK = 0

#: Handles loaded at once: each load may ask a backend (a process, an engine) for news.
LOAD_LIMIT = 16

#: Backends whose runs a listing can summarise from their files, by the entry point
#: their name is registered with (a plugin registered under the same name is loaded
#: the usual way): entry point → (the handle's backend_type, "module:function").
_SUMMARIES = {
    "tether.backends.local:LocalConfig": ("local", "tether.backends.local._listing:summarize"),
}

Summarize = Callable[[dict[str, Any], Callable[[int], bool]], RunSummary | None]


@dataclass
class _Row:
    run_id: str
    handle: str
    submitted: float
    backend: str = "?"
    name: str = "?"
    state: str = "?"
    exit_code: int | None = None
    error: str | None = None
    #: True while the run still needs its real handle loaded.
    pending: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "name": self.name,
            "backend": self.backend,
            "state": self.state,
            "exit_code": self.exit_code,
            "submitted": self.submitted,
            "handle": self.handle,
            "error": self.error,
        }


def age(seconds: float) -> str:
    """A short age: ``42s``, ``7m``, ``3h``, ``12d``."""
    seconds = max(seconds, 0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


class _Processes:
    """Which pids existed when the listing started: one read of ``/proc`` for all runs.

    A supervisor that started later wrote its handle file later, so a pid missing
    from the snapshot is looked up directly only for a handle file newer than it.
    """

    def __init__(self) -> None:
        self.since = time.time() - 1.0  # file times lag the clock by a tick or so
        try:
            self.pids: frozenset[int] | None = frozenset(
                int(name) for name in os.listdir("/proc") if name.isdigit()
            )
        except OSError:
            self.pids = None  # no /proc: every pid is checked in full

    def exists_for(self, submitted: float) -> Callable[[int], bool]:
        if self.pids is None or submitted >= self.since:
            return lambda pid: True
        pids = self.pids
        return lambda pid: pid in pids


class _Summaries:
    """The summary function of each backend name, found once per listing."""

    def __init__(self) -> None:
        self._found: dict[str, tuple[str, Summarize] | None] = {}

    def get(self, backend: str) -> tuple[str, Summarize] | None:
        if backend not in self._found:
            self._found[backend] = self._find(backend)
        return self._found[backend]

    @staticmethod
    def _find(backend: str) -> tuple[str, Summarize] | None:
        target = _SUMMARIES.get(_plugins.entry_point_value(_plugins.BACKENDS, backend) or "")
        if target is None:
            return None
        backend_type, function = target
        module, _, name = function.partition(":")
        summarize: Summarize = getattr(__import__(module, fromlist=[name]), name)
        return backend_type, summarize


def _read_record(handle: str, info: os.stat_result) -> dict[str, Any]:
    """``read_record(Path(handle))``, with one open and read and no pathlib.

    Anything unusual (not a regular file, too big, changed under us, an error to
    word) goes through ``read_record`` itself, so the outcome and its words are its.
    """
    if stat.S_ISREG(info.st_mode) and info.st_size <= MAX_FILE_SIZE:
        try:
            fd = os.open(handle, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            pass
        else:
            try:
                data = os.read(fd, info.st_size + 1)
            except OSError:
                data = None
            finally:
                os.close(fd)
            if data is not None and len(data) == info.st_size:
                return parse_record(data, handle)
    return read_record(Path(handle))


def _summarized(
    row: _Row, record: dict[str, Any], found: tuple[str, Summarize] | None, processes: _Processes
) -> bool:
    """Fill ``row`` from the backend's summary of ``record``; False when there is none."""
    name = record["job"].get("name")
    if found is None or not isinstance(name, str) or not name:
        return False
    backend_type, summarize = found
    summary = summarize(record, processes.exists_for(row.submitted))
    if summary is None:
        return False
    row.backend, row.name, row.state = backend_type, name, summary.state
    row.exit_code, row.error = summary.exit_code, summary.error
    return True


def _scan(runs_dir: Path) -> list[_Row]:
    """A row for every run folder with a ``handle.json``, summarised where it can be."""
    processes = _Processes()
    summaries = _Summaries()
    base = str(runs_dir)
    prefix = "" if base == "." else base.rstrip("/") + "/"  # as str(runs_dir / name)
    rows: list[_Row] = []
    with os.scandir(runs_dir) as entries:
        for entry in entries:
            handle = f"{prefix}{entry.name}/handle.json"
            try:
                info = os.stat(handle)
            except OSError:
                continue  # not a run folder (or one still being created)
            row = _Row(entry.name, handle, info.st_mtime)
            rows.append(row)
            try:
                record = _read_record(handle, info)
            except TetherError as exc:
                row.error = str(exc).splitlines()[0]
                continue
            row.pending = not _summarized(
                row, record, summaries.get(str(record["backend"])), processes
            )
    return rows


async def _fill(row: _Row, limiter: anyio.CapacityLimiter) -> None:
    from ..registry import load_handle

    async with limiter:
        try:
            handle = await load_handle(row.handle)
        except TetherError as exc:
            row.error = str(exc).splitlines()[0]
            return
    row.backend, row.name, row.state = handle.backend_type, handle.job.name, handle.state.value
    if handle.last_result is not None:
        row.exit_code = handle.last_result.exit_code
        row.error = handle.last_result.error


async def _load(rows: list[_Row]) -> None:
    """Fill ``rows`` from their real handles, ``LOAD_LIMIT`` at a time."""
    import anyio

    limiter = anyio.CapacityLimiter(LOAD_LIMIT)
    async with anyio.create_task_group() as tg:
        for row in rows:
            tg.start_soon(_fill, row, limiter)


def _rows(runs_dir: Path) -> list[_Row]:
    """Every run in ``runs_dir``, oldest first: summarised, or else loaded.

    Synchronous: an event loop is started only when some run needs its handle.
    """
    rows = _scan(runs_dir)
    pending = [row for row in rows if row.pending]
    if pending:
        import anyio

        anyio.run(_load, pending)
    rows.sort(key=lambda row: (row.submitted, row.run_id))
    return rows


def ls(args: argparse.Namespace) -> int:
    """List every run folder that holds a ``handle.json``, oldest first."""
    runs_dir: Path = args.runs_dir if args.runs_dir is not None else default_runs_dir()
    if not runs_dir.is_dir():
        if args.runs_dir is not None:
            raise ConfigError(f"Runs folder '{runs_dir}' does not exist or is not a folder.")
        rows: list[_Row] = []
    else:
        rows = _rows(runs_dir)
    if args.json:
        write_lines(sys.stdout, [json.dumps([row.to_json() for row in rows], indent=2)])
        return EXIT_OK
    if not rows:
        write_lines(sys.stderr, [f"tether: no runs in {runs_dir}"])
        return EXIT_OK
    now = time.time()
    lines = [["RUN ID", "BACKEND", "STATE", "EXIT", "AGE", "NOTE"]]
    for row in rows:
        exit_code = "" if row.exit_code is None else str(row.exit_code)
        lines.append(
            [
                row.run_id,
                row.backend,
                row.state,
                exit_code,
                age(now - row.submitted),
                row.error or "",
            ]
        )
    write_lines(sys.stdout, table(lines))
    return EXIT_OK
