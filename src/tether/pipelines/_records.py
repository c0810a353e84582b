"""The state a pipeline's journal records: steps, runs, and how each line folds in.

:func:`apply` folds one journal line into a :class:`Replay`; :func:`snapshot` gives
the lines that replay to a step's whole record (what compaction writes). A line is
input, not authority: a malformed one raises TypeError, ValueError or KeyError, and
the reader turns that into a "corrupt at line N" error.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError

_encode_ascii: Callable[[str], str] = json.encoder.encode_basestring_ascii


class MemberRecord:
    """What the journal knows of one run of a step.

    ``handle`` may still be unread: a snapshot keeps a step's handle records on a
    line of their own, parsed only when one is asked for (a finished run's handle
    is seldom needed, and the handles are most of the file).
    """

    __slots__ = ("_handle", "_unread", "attempts", "result", "run_id")

    def __init__(
        self,
        run_id: str | None = None,
        handle: dict[str, Any] | None = None,
        result: dict[str, Any] | None = None,
        attempts: list[dict[str, Any]] | None = None,
    ) -> None:
        self.run_id = run_id
        self._handle = handle
        self._unread: UnreadHandles | None = None
        #: The RunResult JSON, once the run ended.
        self.result = result
        #: A retried run's attempts so far (number, run id, state, reason of each).
        self.attempts: list[dict[str, Any]] = [] if attempts is None else attempts

    @property
    def handle(self) -> dict[str, Any] | None:
        """The saved handle record, once submit returned."""
        if self._unread is not None:
            self._unread.read()
        return self._handle

    @handle.setter
    def handle(self, value: dict[str, Any] | None) -> None:
        self._unread, self._handle = None, value

    def _key(self) -> tuple[Any, ...]:
        return (self.run_id, self.handle, self.result, self.attempts)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MemberRecord):
            return NotImplemented
        return self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"MemberRecord(run_id={self.run_id!r}, handle={self.handle!r}, "
            f"result={self.result!r}, attempts={self.attempts!r})"
        )


class UnreadHandles:
    """A step's ``handles`` line, kept as bytes until a member's handle is asked for."""

    def __init__(self, line: bytes, members: dict[int, MemberRecord], path: Path) -> None:
        self.line = line
        self.members = members
        self.path = path
        for member in members.values():
            member._unread = self

    def read(self) -> None:
        """Parse the line into the members that still wait for it."""
        waiting = {i: m for i, m in self.members.items() if m._unread is self}
        for member in waiting.values():
            member._unread = None
        try:
            pairs = _handles(json.loads(self.line))
        except (TypeError, ValueError, AttributeError):
            raise ConfigError(
                f"Pipeline state file '{self.path}' is corrupt (the handles of a step): "
                "move it away to start afresh"
            ) from None
        for index, handle in pairs:
            if index in waiting:
                waiting[index]._handle = handle


def _handles(event: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    """The (member, handle record) pairs of a ``handles`` line."""
    pairs = []
    for index, handle in event.get("handles") or ():
        if not isinstance(handle, dict):
            raise TypeError("a handle record is an object")
        pairs.append((int(index), handle))
    return pairs


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
    #: Bytes of the header and snapshot lines, and of the event lines after them.
    snapshot_bytes: int = field(default=0, compare=False)
    tail_bytes: int = field(default=0, compare=False)


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
    if kind == "snapshot":
        replay.steps[name] = _from_snapshot(event)
        return
    if kind == "handles":
        record = replay.steps.setdefault(name, StepRecord())
        for index, handle in _handles(event):
            record.members.setdefault(index, MemberRecord()).handle = handle
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


def snapshot(step: StepRecord, name: str) -> list[dict[str, Any]]:
    """The lines that replay to ``step`` (what compaction writes): the ``snapshot``
    line, and a ``handles`` line when its runs have handles (read only when needed)."""
    event: dict[str, Any] = {"e": "snapshot", "step": name, "digest": step.digest}
    event["state"] = step.state
    for key, value in (("reason", step.reason), ("started", step.started), ("ended", step.ended)):
        if value is not None:
            event[key] = value
    if step.stages:
        event["stages"] = step.stages
    handles: list[list[Any]] = []
    if step.members:
        members = []
        for index, member in sorted(step.members.items()):
            item: dict[str, Any] = {"member": index}
            if member.run_id is not None:
                item["run_id"] = member.run_id
            if member.result is not None:
                item["result"] = member.result
            if member.attempts:
                item["attempts"] = member.attempts
            members.append(item)
            if member.handle is not None:
                handles.append([index, member.handle])
        event["members"] = members
    if step.posts:
        event["posts"] = [[index, report] for index, report in sorted(step.posts.items())]
    if not handles:
        return [event]
    return [event, {"e": "handles", "step": name, "handles": handles}]


def handles_prefix(name: str) -> bytes:
    """How the ``handles`` line of step ``name`` starts, as compaction writes it."""
    # json.dumps(name), without building its call for each step of a large file.
    return b'{"e":"handles","step":' + _encode_ascii(name).encode() + b","


#: The types ``isinstance`` checks against on every line (tuples: no union built each time).
_OBJECT = (dict, type(None))
_NUMBER = (int, float)


def _from_snapshot(event: dict[str, Any]) -> StepRecord:
    """The record a ``snapshot`` line holds (a malformed one raises TypeError, ValueError)."""
    members: dict[int, MemberRecord] = {}
    for item in event.get("members") or ():
        get = item.get
        handle, result, attempts = get("handle"), get("result"), get("attempts")
        if not isinstance(handle, _OBJECT) or not isinstance(result, _OBJECT):
            raise TypeError("a member's handle and result are objects")
        run_id = get("run_id")
        members[int(item["member"])] = MemberRecord(
            run_id=None if run_id is None else str(run_id),
            handle=handle,
            result=result,
            attempts=attempts if isinstance(attempts, list) else [],
        )
    stages = event.get("stages") or {}
    if not isinstance(stages, dict):
        raise TypeError("stages is an object")
    return StepRecord(
        digest=str(event.get("digest", "")),
        state=str(event.get("state", "PENDING")),
        reason=None if event.get("reason") is None else str(event["reason"]),
        started=_seconds(event.get("started")),
        ended=_seconds(event.get("ended")),
        stages={str(stage): dict(info) for stage, info in stages.items()},
        members=members,
        posts={int(index): dict(report) for index, report in event.get("posts") or ()},
    )


def _seconds(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, _NUMBER):
        raise TypeError("a time is a number of seconds")
    return float(value)
