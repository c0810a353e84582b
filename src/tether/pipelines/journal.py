"""The pipeline state file: a snapshot, then an append-only journal of transitions.

Each transition is one JSON line appended with a single ``write`` before the runner
goes on, so a crash (even SIGKILL) loses nothing that happened before it; a torn
last line is ignored on reading and cut off before appending. Intent is written
before action: a run's id before it is submitted, so a resumed pipeline can find a
run whose submitter died before its handle was recorded. Replaying the lines gives
each step's state.

The file stays O(steps), not O(transitions): it is *compacted*, rewritten (temp file,
``fsync``, rename) as the header and a ``snapshot`` line per step, its runs' handle
records on a second line parsed only when one is needed. That happens at the end of
a run that changed anything, on opening a file an interrupted run left lines in,
and mid-run once the lines beyond a normal run's budget per step and run (retry
attempts, resubmissions, restarts) outweigh the snapshot (:data:`COMPACT_RATIO`).
A step's snapshot line is kept in memory while the step does not change, so a
compaction re-encodes only the steps that moved. Appends are not ``fsync``ed (the
file survives the process dying, not the machine losing power); a compaction is,
so it never leaves a file emptier than the one it replaced.

Version 2 files (snapshot lines) are written; version 1 files (events only) are
read, and become version 2 at their first compaction.

One pipeline process owns a state file at a time (an exclusive ``flock``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic_core import from_json

from .._files import make_private_dir
from ..errors import ConfigError
from ._records import (
    MemberRecord,
    Replay,
    StepRecord,
    UnreadHandles,
    apply,
    handles_prefix,
    snapshot,
)

#: The version this tether writes; it reads every version in :data:`READABLE`.
VERSION = 2
READABLE = (1, 2)
#: Compact once the superseded lines appended since the snapshot are this many times
#: its size…
COMPACT_RATIO = 2
#: … and at least this many bytes.
COMPACT_FLOOR = 1 << 20
#: Lines a step may add between snapshots before more count as superseded: a few for
#: the step and its stages, and per run and postprocessor report.
STEP_LINES, MEMBER_LINES = 12, 4


__all__ = [
    "COMPACT_FLOOR",
    "COMPACT_RATIO",
    "MEMBER_LINES",
    "READABLE",
    "STEP_LINES",
    "VERSION",
    "Journal",
    "MemberRecord",
    "Replay",
    "StepRecord",
    "apply",
    "read",
    "snapshot",
]


def read(path: Path) -> Replay:
    """Replay the journal at ``path`` (read-only; a missing file is an empty journal)."""
    replay = Replay()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return replay
    except OSError as exc:
        raise ConfigError(f"Cannot read pipeline state file '{path}': {exc.strerror}") from exc
    _replay_bytes(replay, data, path)
    return replay


_HEADER = b'{"e":"pipeline"'


def _not_a_journal(path: Path) -> ConfigError:
    return ConfigError(
        f"'{path}' is not a tether pipeline state file (version {VERSION}): "
        "give another --state path"
    )


def _check_header(event: Any, path: Path) -> None:
    if not isinstance(event, dict) or event.get("e") != "pipeline":
        raise _not_a_journal(path)
    version = event.get("version")
    if version in READABLE and not isinstance(version, bool):
        return
    if isinstance(version, int) and not isinstance(version, bool) and version > VERSION:
        raise ConfigError(
            f"Pipeline state file '{path}' has version {version}, newer than this tether "
            f"reads (up to {VERSION}): upgrade tether, or give another --state path"
        )
    raise _not_a_journal(path)


def _replay_bytes(
    replay: Replay, data: bytes, path: Path, lines: dict[str, bytes] | None = None
) -> int:
    """Apply every complete line; return the length of the good prefix.

    Only an unterminated last line counts as torn (one ``write`` never leaves a
    newline-terminated fragment); a bad complete line is corruption. With ``lines``,
    the snapshot lines of steps no later line changes are kept there, as they are.
    """
    good = 0
    tail = 0
    last: str | None = None  # the step of the snapshot line just before
    start = 0  # where that line starts
    chunks = data.split(b"\n")
    for number, line in enumerate(chunks[:-1], start=1):
        size = len(line) + 1
        if last is not None and line.startswith(handles_prefix(last)):
            # The handles of the snapshot before: read only if one is asked for.
            UnreadHandles(line, replay.steps[last].members, path)
            if lines is not None:
                lines[last] = data[start : good + size]  # both lines, as they are
            good += size
            last = None
            continue
        last = None
        try:
            event = _parse(line)
        except ValueError:
            event = None
        if number == 1:
            _check_header(event, path)
        try:
            if not isinstance(event, dict):
                raise TypeError("not an object")
            apply(replay, event)
            kind, step = event.get("e"), event.get("step")
            if kind == "snapshot" and not tail:
                if isinstance(step, str):
                    last, start = step, good
                    if lines is not None:
                        lines[step] = data[good : good + size]
            elif kind != "pipeline" or tail:
                tail += size
                if lines is not None and isinstance(step, str):
                    lines.pop(step, None)
        except (TypeError, ValueError, KeyError, AttributeError):
            raise ConfigError(
                f"Pipeline state file '{path}' is corrupt at line {number}: "
                "move it away to start afresh"
            ) from None
        good += size
    if chunks[-1]:
        if good == 0 and not _HEADER.startswith(chunks[-1][: len(_HEADER)]):
            raise _not_a_journal(path)  # not even the start of a header: not ours
        replay.torn = True
    replay.snapshot_bytes, replay.tail_bytes = good - tail, tail
    return good


def _parse(line: bytes) -> Any:
    """``json.loads(line)``, faster: pydantic-core's parser first (a large file spends
    much of its reading here), ``json.loads`` itself for any line that parser refuses.

    On every line both accept they agree (the tests compare them, floats and big
    integers included); what pydantic-core refuses (lone surrogates, a byte order
    mark, deep nesting) gets ``json.loads``'s result or error, as before.
    """
    try:
        return from_json(line)
    except ValueError:
        return json.loads(line)


class Journal:
    """The state file of one running pipeline, open for appending (and locked)."""

    def __init__(self, path: Path, name: str) -> None:
        self.path = path
        self.name = name
        self.replay = Replay(name=name)
        #: How many times this journal rewrote its file (for tests and benchmarks).
        self.compactions = 0
        self._fd = -1
        #: Step name → its snapshot line, while the step has not changed since.
        self._lines: dict[str, bytes] = {}
        self._snapshot = 0
        self._tail = 0
        #: Lines each step added since the last snapshot, and the bytes of those over
        #: its budget: what a compaction would drop (attempts, resubmissions, restarts).
        self._step_lines: dict[str, int] = {}
        self._excess = 0

    def open(self) -> Replay:
        """Lock the file, replay it, drop a torn tail, and start appending.

        A file an interrupted run left events in is compacted at once.
        """
        path = self.path
        try:
            make_private_dir(path.parent)  # the folders it makes are owner-only
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise ConfigError(
                f"Cannot open pipeline state file '{path}': {exc.strerror}; "
                "give a writable --state path"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(
                f"Pipeline state file '{path}' is in use by another running pipeline: "
                "wait for it to end, or give another --state path"
            ) from None
        try:
            if os.fstat(fd).st_mode & 0o077:  # made readable by others since: private again
                with contextlib.suppress(OSError):
                    os.fchmod(fd, 0o600)
            chunks = []
            offset = 0
            while chunk := os.pread(fd, 1 << 22, offset):
                chunks.append(chunk)
                offset += len(chunk)
            data = b"".join(chunks)
            replay = Replay()
            lines: dict[str, bytes] = {}
            good = _replay_bytes(replay, data, path, lines)
            if replay.name is not None and replay.name != self.name:
                raise ConfigError(
                    f"Pipeline state file '{path}' belongs to pipeline {replay.name!r}, not "
                    f"{self.name!r}: give another --state path"
                )
            if good != len(data):
                os.ftruncate(fd, good)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self.replay = replay
        self._lines = lines
        self._snapshot, self._tail = replay.snapshot_bytes, replay.tail_bytes
        if replay.name is None:
            self.append({"e": "pipeline", "version": VERSION, "name": self.name})
            self._snapshot, self._tail = self._tail, 0
        elif self._tail:
            self.compact()
        return replay

    def append(self, event: dict[str, Any]) -> None:
        """Record one transition, in one write, before going on (compacting when due)."""
        event.setdefault("time", time.time())
        apply(self.replay, event)
        step = event.get("step")
        if step is not None:
            self._lines.pop(step, None)
        if self._fd < 0:
            return
        data = _line(event).encode()
        _write_all(self._fd, data)
        self._tail += len(data)
        if isinstance(step, str):
            # A normal run adds a bounded number of lines per step and run, so its log
            # is O(steps) without compacting mid-run (which would encode steps still
            # going again and again); only lines beyond that budget call for it.
            count = self._step_lines[step] = self._step_lines.get(step, 0) + 1
            record = self.replay.steps.get(step)
            runs = 0 if record is None else len(record.members) + len(record.posts)
            if count > STEP_LINES + MEMBER_LINES * runs:
                self._excess += len(data)
                if self._excess > max(COMPACT_RATIO * self._snapshot, COMPACT_FLOOR):
                    self.compact()

    @property
    def dirty(self) -> bool:
        """Whether lines were appended since the file was last compact."""
        return self._tail > 0

    def compact(self) -> None:
        """Rewrite the file as its header and one snapshot line per step (atomically)."""
        if self._fd < 0:
            return
        header = {
            "e": "pipeline",
            "version": VERSION,
            "name": self.name,
            "time": self.replay.created or time.time(),
        }
        parts = [_line(header).encode()]
        lines = self._lines
        for name, step in self.replay.steps.items():
            line = lines.get(name)
            if line is None:
                line = b"".join(_line(event).encode() for event in snapshot(step, name))
                lines[name] = line
            parts.append(line)
        text = b"".join(parts)
        # The new file is locked before it replaces the old one: there is no moment
        # when another pipeline could take it. It is on disk before the rename, so a
        # machine that loses power keeps the old file or the whole new one.
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            os.fchmod(fd, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            _write_all(fd, text)
            os.fsync(fd)
            os.replace(tmp, self.path)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        _sync_folder(self.path.parent)
        os.close(self._fd)
        self._fd = fd  # at the end of the file, where appends go
        self._snapshot, self._tail = len(text), 0
        self._step_lines.clear()
        self._excess = 0
        self.compactions += 1

    def close(self) -> None:
        """Release the lock."""
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1


def _line(event: dict[str, Any]) -> str:
    return json.dumps(event, separators=(",", ":"), default=str) + "\n"


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _sync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort: not every filesystem allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
