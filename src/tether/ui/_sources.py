"""What the dashboard shows, read from the records the CLI reads.

Runs are the folders holding a ``handle.json`` under the runs folders (``tether ls``
reads them the same way), loaded with :func:`tether.load_handle`; pipelines are their
state files (``tether pipeline status``) and, where it can be found, the pipeline
file that gives the DAG's edges; the cache is a store's entries (``tether cache ls``).

Everything here expects its records to come and go underneath it: a folder without
a handle yet is skipped, an unreadable or half-written record becomes a row with a
note, and a run folder that disappears drops out of the next snapshot.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from ..errors import TetherError
from ..handle import RunHandle
from ..registry import handle_from_record, load_handle

#: A run id as tether makes them (``_runs.chosen_run_id``): a safe folder name.
RUN_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}")

#: Handles loaded or refreshed at once: each may ask a backend for news.
LOAD_LIMIT = 16


def safe_run_id(run_id: str) -> bool:
    """Whether ``run_id`` can only name a folder inside a runs folder."""
    return RUN_ID.fullmatch(run_id) is not None


@dataclass
class RunRow:
    """One run as the runs list shows it."""

    run_id: str
    record: Path
    submitted: float
    stamp: tuple[float, int] = (0.0, 0)
    name: str = "?"
    backend: str = "?"
    state: str = "?"
    exit_code: int | None = None
    duration: float | None = None
    error: str | None = None
    handle: RunHandle | None = field(default=None, repr=False, compare=False)

    @property
    def terminal(self) -> bool:
        """Whether the run has ended (its row will not change again)."""
        return self.handle is not None and self.handle.state.is_terminal

    def fill(self, handle: RunHandle) -> None:
        """Copy what the list shows from a freshly loaded or refreshed handle."""
        self.handle = handle
        self.name, self.backend = handle.job.name, handle.backend_type
        self.state = handle.state.value
        result = handle.last_result
        self.error = None
        if result is not None:
            self.exit_code, self.error, self.duration = (
                result.exit_code,
                result.error,
                result.duration,
            )


def _stamp(path: Path) -> tuple[float, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return (info.st_mtime, info.st_size)


class Runs:
    """The runs under some runs folders, refreshed at most once per ``interval``."""

    def __init__(self, folders: list[Path], *, interval: float = 1.0) -> None:
        self.folders = folders
        self.interval = interval
        self._rows: dict[Path, RunRow] = {}
        self._taken = -float("inf")
        self._lock = anyio.Lock()

    def record_of(self, run_id: str) -> Path | None:
        """The handle file of the run with this id, in the first folder that has it."""
        if not safe_run_id(run_id):
            return None
        for folder in self.folders:
            record = folder / run_id / "handle.json"
            if record.is_file():
                return record
        return None

    async def snapshot(self) -> list[RunRow]:
        """Every run, newest first, as of at most ``interval`` seconds ago."""
        async with self._lock:
            if time.monotonic() - self._taken >= self.interval:
                await self._scan()
                self._taken = time.monotonic()
            return sorted(self._rows.values(), key=lambda r: (-r.submitted, r.run_id))

    async def _scan(self) -> None:
        seen: dict[Path, tuple[float, int]] = {}
        for folder in self.folders:
            try:
                children = list(folder.iterdir())
            except OSError:
                continue  # not there (yet), or not readable: no runs from it
            for child in children:
                record = child / "handle.json"
                stamp = _stamp(record)
                if stamp is not None and record not in seen:
                    seen[record] = stamp
        for gone in set(self._rows) - set(seen):
            del self._rows[gone]
        limiter = anyio.CapacityLimiter(LOAD_LIMIT)
        async with anyio.create_task_group() as tg:
            for record, stamp in seen.items():
                row = self._rows.get(record)
                if row is None or row.stamp != stamp:
                    row = RunRow(record.parent.name, record, submitted=stamp[0], stamp=stamp)
                    self._rows[record] = row
                    tg.start_soon(_load, row, limiter)
                elif not row.terminal and row.handle is not None:
                    tg.start_soon(_refresh, row, limiter)


async def _load(row: RunRow, limiter: anyio.CapacityLimiter) -> None:
    async with limiter:
        try:
            handle = await load_handle(row.record)
        except (TetherError, OSError, ValueError) as exc:
            row.handle, row.error = None, str(exc).splitlines()[0]
            row.state = "UNREADABLE"
            return
    row.fill(handle)


async def _refresh(row: RunRow, limiter: anyio.CapacityLimiter) -> None:
    assert row.handle is not None
    async with limiter:
        try:
            await row.handle.refresh()
        except Exception as exc:  # a backend's failure to answer is a note, not a crash
            row.error = f"refresh failed: {type(exc).__name__}: {exc}"
            return
    row.fill(row.handle)


# -- pipelines --------------------------------------------------------------------------


@dataclass
class Member:
    """One run of a pipeline step, as its state file records it."""

    index: int
    run_id: str | None
    state: str
    record: dict[str, Any] | None = field(default=None, repr=False)


@dataclass
class StepView:
    """One step of a pipeline: its state, its runs, the steps it waits for."""

    name: str
    state: str = "PENDING"
    reason: str | None = None
    upstream: tuple[str, ...] = ()
    members: list[Member] = field(default_factory=list)


@dataclass
class PipelineView:
    """A pipeline as the dashboard shows it."""

    key: int
    path: Path
    name: str
    running: bool = False
    steps: dict[str, StepView] = field(default_factory=dict)
    error: str | None = None
    has_edges: bool = False

    @property
    def state(self) -> str:
        """One word for the whole pipeline."""
        if self.error is not None:
            return "UNREADABLE"
        states = {step.state for step in self.steps.values()}
        if self.running:
            return "RUNNING"
        if not states:
            return "PENDING"
        if states == {"SUCCEEDED"}:
            return "SUCCEEDED"
        return "FAILED" if states & {"FAILED", "CANCELLED", "SKIPPED"} else "PENDING"


def pipeline_running(state: Path) -> bool:
    """Whether a running pipeline holds the state file's lock.

    Read from ``/proc/locks`` where there is one: probing with ``flock`` (as
    ``tether pipeline status`` does once) would, polled every second, now and then
    hold the lock at the very moment a pipeline starts and make it refuse to run.
    """
    try:
        info = state.stat()
        locks = Path("/proc/locks").read_text()
    except FileNotFoundError:
        if state.exists():
            from ..cli._pipeline import _in_use

            return _in_use(state)
        return False
    except OSError:
        return False
    # "1: FLOCK  ADVISORY  WRITE 1234 08:01:56789 0 EOF": the inode alone is matched,
    # since overlay file systems report another device there than stat() does.
    inode = str(info.st_ino)
    for line in locks.splitlines():
        fields = line.split()
        held = len(fields) >= 6 and fields[1] == "FLOCK" and fields[3] == "WRITE"
        if held and fields[5].rpartition(":")[2] == inode:
            return True
    return False


def _spec_beside(state: Path) -> Path | None:
    """The pipeline file next to a state file whose default state file it is."""
    name = state.name
    stem = name[: -len(".state.jsonl")] if name.endswith(".state.jsonl") else state.stem
    for suffix in (".yml", ".yaml", ".json"):
        candidate = state.with_name(stem + suffix)
        if candidate.is_file():
            return candidate
    return None


class Pipelines:
    """The pipelines named on the command line: state files, or pipeline files."""

    def __init__(self, paths: list[Path]) -> None:
        self._given = paths
        self._states: list[Path] = []
        self._names: list[str] = []
        self._edges: list[dict[str, tuple[str, ...]] | None] = []
        for path in paths:
            state, name, edges = self._resolve(path)
            if state in self._states:
                continue  # the same pipeline named twice (its file and its state file)
            self._states.append(state)
            self._names.append(name)
            self._edges.append(edges)

    @staticmethod
    def _resolve(path: Path) -> tuple[Path, str, dict[str, tuple[str, ...]] | None]:
        """The state file, a name and the DAG's edges (when a pipeline file gives them)."""
        from ..pipelines.spec import load_pipeline

        spec: Path | None = path
        state = path
        if path.name.endswith(".jsonl") or not path.is_file():
            spec = _spec_beside(path)
        if spec is None:
            return state, path.name, None
        try:
            loaded = load_pipeline(spec)
        except TetherError:
            return state, path.name, None
        if spec == path:
            state = loaded.state
        elif loaded.state.absolute() != path.absolute():
            return state, path.name, None  # a pipeline file, but another state file's
        edges = {name: step.upstream() for name, step in loaded.pipeline.steps.items()}
        return state, loaded.pipeline.name, edges

    def __len__(self) -> int:
        return len(self._states)

    async def view(self, key: int) -> PipelineView:
        """The pipeline's steps as its state file records them now."""
        return await anyio.to_thread.run_sync(self._view, key)

    async def views(self) -> list[PipelineView]:
        """Every pipeline, in the order given."""
        return [await self.view(key) for key in range(len(self))]

    def _view(self, key: int) -> PipelineView:
        from ..pipelines import journal

        state, edges = self._states[key], self._edges[key]
        view = PipelineView(key, state, self._names[key], has_edges=edges is not None)
        for name, upstream in (edges or {}).items():
            view.steps[name] = StepView(name, upstream=upstream)
        try:
            replay = journal.read(state)
        except TetherError as exc:
            view.error = str(exc).splitlines()[0]
            return view
        view.name = replay.name or view.name
        view.running = pipeline_running(state)
        for name, record in replay.steps.items():
            step = view.steps.setdefault(name, StepView(name))
            step.state, step.reason = record.state, record.reason
            step.members = [
                Member(
                    index,
                    member.run_id,
                    str(
                        (member.result or {}).get("state")
                        or ("RUNNING" if member.handle else "SUBMITTING")
                    ),
                    member.handle,
                )
                for index, member in sorted(record.members.items())
            ]
        return view

    async def member_handle(self, key: int, step: str, index: int) -> RunHandle | None:
        """A handle on one run of a step, rebuilt from the state file's record."""
        view = await self.view(key)
        found = view.steps.get(step)
        member = next((m for m in found.members if m.index == index), None) if found else None
        if member is None or member.record is None:
            return None
        try:
            handle = handle_from_record(member.record)
            await handle.refresh()
        except (TetherError, OSError, ValueError):
            return None
        return handle


# -- the cache --------------------------------------------------------------------------


@dataclass
class CacheRow:
    """One cache entry, as the cache page shows it."""

    key: str
    name: str
    backend: str
    state: str
    size: int
    hits: int
    created: float
    last_used: float


class Cache:
    """The entries of one cache store (the default SQLite store unless told)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def location(self) -> Path:
        """Where the store lives."""
        from ..cache.sqlite_store import default_path

        return self.path if self.path is not None else default_path()

    async def entries(self) -> list[CacheRow]:
        """Every entry, most recently used first; none when there is no store yet."""
        return await anyio.to_thread.run_sync(self._entries)

    def _entries(self) -> list[CacheRow]:
        from ..cache import DirectoryStore, SQLiteStore

        where = self.location()
        if not where.exists():
            return []  # nothing recorded yet: viewing must not create a store
        store = DirectoryStore(where) if where.is_dir() else SQLiteStore(where)
        rows = [
            CacheRow(
                e.key,
                e.name,
                e.backend,
                str(e.result.get("state", "?")),
                e.size,
                e.hits,
                e.created,
                e.last_used,
            )
            for e in store.entries()
        ]
        return sorted(rows, key=lambda r: -r.last_used)
