"""The pipeline state file: an append-only journal of every transition.

Each transition is one JSON line appended with a single ``write`` before the runner
goes on, so a crash (even SIGKILL) loses nothing that happened before it; a torn
last line is ignored on reading and cut off before appending. Intent is written
before action: a run's id before it is submitted, so a resumed pipeline can find a
run whose submitter died before its handle was recorded. Replaying the lines gives
each step's state; at the end of a run the file is rewritten as a compact snapshot
(temp file and rename), so it does not grow with every resume.

One pipeline process owns a state file at a time (an exclusive ``flock``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._files import make_private_dir
from ..errors import ConfigError

VERSION = 1


@dataclass
class MemberRecord:
    """What the journal knows of one run of a step."""

    run_id: str | None = None
    #: The saved handle record, once submit returned.
    handle: dict[str, Any] | None = None
    #: The RunResult JSON, once the run ended.
    result: dict[str, Any] | None = None
    #: A retried run's attempts so far (number, run id, state, reason of each).
    attempts: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class StepRecord:
    """What the journal knows of one step."""

    digest: str = ""
    state: str = "PENDING"
    reason: str | None = None
    started: float | None = None
    ended: float | None = None
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    members: dict[int, MemberRecord] = field(default_factory=dict)
    #: Postprocessor reports by the index of the run they are about.
    posts: dict[int, dict[str, Any]] = field(default_factory=dict)

    @property
    def postprocess(self) -> list[dict[str, Any]]:
        """The postprocessor reports in run order."""
        return [self.posts[index] for index in sorted(self.posts)]


@dataclass
class Replay:
    """The state a journal's lines add up to."""

    name: str | None = None
    created: float | None = None
    steps: dict[str, StepRecord] = field(default_factory=dict)
    #: Whether the last line was torn (cut off by a crash mid-write).
    torn: bool = False


def apply(replay: Replay, event: dict[str, Any]) -> None:
    """Fold one journal line into ``replay``."""
    kind = event.get("e")
    if kind == "pipeline":
        replay.name = event.get("name")
        replay.created = replay.created or event.get("time")
        return
    name = event.get("step")
    if not isinstance(name, str):
        return
    step = replay.steps.setdefault(name, StepRecord())
    if kind == "step":
        digest = str(event.get("digest", ""))
        if (digest and digest != step.digest) or event.get("fresh"):
            # A new definition: what the old one recorded no longer stands.
            replay.steps[name] = step = StepRecord(digest=digest)
        step.state = str(event.get("state", step.state))
        step.reason = event.get("reason")
        if step.state == "RUNNING":
            step.started, step.ended = event.get("time"), None
            step.posts = {}
        elif step.state != "PENDING":
            step.ended = event.get("time")
    elif kind == "stage":
        step.stages[str(event.get("stage"))] = {
            k: event.get(k) for k in ("state", "time", "started", "message")
        }
    elif kind == "member":
        index = int(event.get("member", 0))
        if event.get("reset"):
            step.members.pop(index, None)
            return
        member = step.members.setdefault(index, MemberRecord())
        if "run_id" in event:  # a new submission replaces what an earlier one left
            member.run_id, member.handle, member.result = event["run_id"], None, None
            member.attempts = []
        if "handle" in event:
            member.handle = event["handle"]
            # The backend's own id (one without ``find`` names its runs itself).
            member.run_id = str(event["handle"].get("run_id", member.run_id))
        if "result" in event:
            member.result = event["result"]
        if isinstance(event.get("attempts"), list):
            member.attempts = event["attempts"]
    elif kind == "post":
        about = event.get("member")
        step.posts[about if isinstance(about, int) else len(step.posts)] = dict(
            event.get("report") or {}
        )


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


def _replay_bytes(replay: Replay, data: bytes, path: Path) -> int:
    """Apply every complete line; return the length of the good prefix.

    Only an unterminated last line counts as torn (one ``write`` never leaves a
    newline-terminated fragment); a bad complete line is corruption.
    """
    good = 0
    lines = data.split(b"\n")
    for number, line in enumerate(lines[:-1], start=1):
        try:
            event = json.loads(line)
        except ValueError:
            event = None
        if number == 1 and (
            not isinstance(event, dict)
            or event.get("e") != "pipeline"
            or event.get("version") != VERSION
        ):
            raise _not_a_journal(path)
        if not isinstance(event, dict):
            raise ConfigError(
                f"Pipeline state file '{path}' is corrupt at line {number}: "
                "move it away to start afresh"
            )
        apply(replay, event)
        good += len(line) + 1
    if lines[-1]:
        if good == 0 and not _HEADER.startswith(lines[-1][: len(_HEADER)]):
            raise _not_a_journal(path)  # not even the start of a header: not ours
        replay.torn = True
    return good


class Journal:
    """The state file of one running pipeline, open for appending (and locked)."""

    def __init__(self, path: Path, name: str) -> None:
        self.path = path
        self.name = name
        self.replay = Replay(name=name)
        self._fd = -1

    def open(self) -> Replay:
        """Lock the file, replay it, drop a torn tail, and start appending."""
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
            data = b""
            while chunk := os.pread(fd, 1 << 20, len(data)):
                data += chunk
            replay = Replay()
            good = _replay_bytes(replay, data, path)
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
        if replay.name is None:
            self.append({"e": "pipeline", "version": VERSION, "name": self.name})
        return replay

    def append(self, event: dict[str, Any]) -> None:
        """Record one transition, in one write, before going on."""
        event.setdefault("time", time.time())
        apply(self.replay, event)
        if self._fd < 0:
            return
        _write_all(self._fd, _line(event).encode())

    def compact(self) -> None:
        """Rewrite the file as the shortest journal with the same state (atomically)."""
        if self._fd < 0:
            return
        lines = [
            {
                "e": "pipeline",
                "version": VERSION,
                "name": self.name,
                "time": self.replay.created or time.time(),
            }
        ]
        for name, step in self.replay.steps.items():
            first = "RUNNING" if step.started is not None else "PENDING"
            lines.append(
                {
                    "e": "step",
                    "step": name,
                    "digest": step.digest,
                    "state": first,
                    "time": step.started,
                }
            )
            for index, member in sorted(step.members.items()):
                event: dict[str, Any] = {"e": "member", "step": name, "member": index}
                if member.run_id is not None:
                    event["run_id"] = member.run_id
                if member.handle is not None:
                    event["handle"] = member.handle
                if member.result is not None:
                    event["result"] = member.result
                if member.attempts:
                    event["attempts"] = member.attempts
                lines.append(event)
            for stage, info in step.stages.items():
                lines.append({"e": "stage", "step": name, "stage": stage, **info})
            for index, report in sorted(step.posts.items()):
                lines.append({"e": "post", "step": name, "member": index, "report": report})
            lines.append(
                {
                    "e": "step",
                    "step": name,
                    "digest": step.digest,
                    "state": step.state,
                    "reason": step.reason,
                    "time": step.ended or step.started,
                }
            )
        text = "".join(_line(line) for line in lines).encode()
        # The new file is locked before it replaces the old one: there is no moment
        # when another pipeline could take it.
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            os.fchmod(fd, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            _write_all(fd, text)
            os.replace(tmp, self.path)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        os.close(self._fd)
        self._fd = fd  # at the end of the file, where appends go

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
