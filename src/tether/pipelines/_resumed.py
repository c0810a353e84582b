"""The reports of steps that finished in an earlier run, built from their records.

A resumed 10,000-step pipeline reports 10,000 steps, each with its stages, its run
and the run's result: validating those tens of thousands of models costs most of a
resume. The records our own journal writes have one known shape (what
``RunResult.model_dump(mode="json")`` and the recorder put there), so for them the
report objects are assembled directly, as validation would make them: the same
fields in the same order, the same field sets, and the times converted by pydantic
itself, in one batch. A record of any other shape, or a value of any other type, is
validated exactly as before (:func:`validated`), with the same errors.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError

from ..result import RunResult, RunState
from ._reports import json_params
from ._resume import EARLIER
from .journal import Replay, StepRecord
from .report import MemberReport, StageReport, StepReport, StepState
from .step import Step

M = TypeVar("M", bound=BaseModel)

#: The keys of a journaled run result: every field of its JSON form.
_RESULT_KEYS = frozenset(
    name for name, info in RunResult.model_fields.items() if info.exclude is not True
)
_STATES = {state.value: state for state in RunState}
#: The member fields a resumed run's report sets (``attempts`` keeps its default).
_MEMBER_SET = frozenset(("index", "run_id", "state", "params", "origin", "result"))
_STEP_SET = frozenset(StepReport.model_fields)
_STAGE_SET = frozenset(StageReport.model_fields)


class _Unusual(Exception):
    """A record not in the shape our journal writes: validate it instead."""


def reports_done(done: list[str], steps: dict[str, Step], replay: Replay) -> dict[str, StepReport]:
    """The reports of the steps in ``done`` (in that order), from their records."""
    try:
        reports = assembled(done, steps, replay)
    except _Unusual:
        reports = validated(done, steps, replay)
    return {report.name: report for report in reports}


def validated(done: list[str], steps: dict[str, Step], replay: Replay) -> list[StepReport]:
    """The reports validated in one call from plain data (times as seconds)."""
    data = [_done_data(name, replay.steps[name], steps[name]) for name in done]
    return _done_adapter().validate_python(data)


def assembled(done: list[str], steps: dict[str, Step], replay: Replay) -> list[StepReport]:
    """The reports built directly from records of the journal's own shape.

    Raises _Unusual for anything else. Equal to :func:`validated` in every field,
    type and field set (the tests compare them).
    """
    records = [(name, replay.steps[name], steps[name]) for name in done]
    build = _Builder(_times(records))
    return [build.step(name, record, step) for name, record, step in records]


def _times(records: list[tuple[str, StepRecord, Step]]) -> Iterator[datetime | None]:
    """Every time of the reports, converted by pydantic in one batch, in the order
    :class:`_Builder` takes them."""
    times: list[Any] = []
    add = times.append
    for _, record, step in records:
        for info in record.stages.values():
            add(info.get("started"))
            add(info.get("time") if info.get("state") != "RUNNING" else None)
        add(record.started)
        add(record.ended)
        for index in range(len(step.members())):
            result = record.members[index].result
            if result is not None:
                if type(result) is not dict:
                    raise _Unusual
                add(result.get("started_at"))
                add(result.get("ended_at"))
    try:
        return iter(_times_adapter().validate_python(times))
    except ValidationError:
        raise _Unusual from None


class _Builder:
    """Assembles reports, taking their times from an iterator of converted ones."""

    def __init__(self, times: Iterator[datetime | None]) -> None:
        self.time = times.__next__
        #: Folder → its parsed path, for the many paths under the same few folders.
        self.folders: dict[str, Path] = {}

    def step(self, name: str, record: StepRecord, step: Step) -> StepReport:
        """The report of a step that finished before."""
        time = self.time
        stages: dict[str, StageReport] = {}
        for stage, info in record.stages.items():
            message = info.get("message")
            fields: dict[str, Any] = {
                "state": str(info.get("state") or "PENDING"),
                "started_at": time(),
                "ended_at": time(),
                "message": None if message is None else str(message),
            }
            stages[stage] = _model(StageReport, fields, set(_STAGE_SET))
        fields = {
            "name": name,
            "state": StepState.SUCCEEDED,
            "reason": EARLIER,
            "digest": record.digest,
            "resumed": True,
            "started_at": time(),
            "ended_at": time(),
            "stages": stages,
            "runs": [self.run(record, step, index) for index in range(len(step.members()))],
            "postprocess_results": [_plain_dict(report) for report in record.postprocess],
        }
        return _model(StepReport, fields, set(_STEP_SET))

    def run(self, record: StepRecord, step: Step, index: int) -> MemberReport:
        """The report of a step's run that succeeded before."""
        member = record.members[index]
        result = member.result
        recorded = result or {}
        run_id = member.run_id or recorded.get("run_id")
        state = recorded.get("state")
        if not (run_id is None or type(run_id) is str) or not (state is None or state in _STATES):
            raise _Unusual
        fields = {
            "index": index,
            "run_id": run_id,
            "state": None if state is None else _STATES[state],
            "params": _plain_dict(json_params(step, index)),
            "origin": "recorded",
            "result": None if result is None else self.result(result),
            "attempts": None,
        }
        return _model(MemberReport, fields, set(_MEMBER_SET))

    def result(self, data: dict[str, Any]) -> RunResult:
        """A journaled run result, as ``RunResult.model_validate`` would make it."""
        if data.keys() != _RESULT_KEYS:
            raise _Unusual
        run_id, state, exit_code = data["run_id"], data["state"], data["exit_code"]
        outputs = data["outputs"]
        if (
            type(run_id) is not str
            or type(state) is not str
            or state not in _STATES
            or not (exit_code is None or type(exit_code) is int)
            or type(outputs) is not list
            or not _is_text(data["error"])
            or not _is_text(data["traceback"])
        ):
            raise _Unusual
        raw_dir = data["run_dir"]
        run_dir = self.path(raw_dir)
        fields: dict[str, Any] = {
            "run_id": run_id,
            "state": _STATES[state],
            "exit_code": exit_code,
            "started_at": self.time(),
            "ended_at": self.time(),
        }
        for key in ("stdout", "stderr"):
            value = data[key]
            # The logs are usually in the run folder: join them to its path.
            inside = run_dir is not None and value == f"{raw_dir}/{key}"
            fields[key] = (
                _child(run_dir, key) if inside and run_dir is not None else self.path(value)
            )
        fields["outputs"] = [self.path(path) for path in outputs]
        fields["run_dir"] = run_dir
        fields["error"] = data["error"]
        fields["value"] = fields["exception"] = None
        fields["traceback"] = data["traceback"]
        return _model(RunResult, fields, set(data), {"_captured": None})

    def path(self, value: Any) -> Path | None:
        """``Path(value)``, parsing each folder once (joining a name is cheaper)."""
        if value is None:
            return None
        if type(value) is not str or not value:
            raise _Unusual
        folder, _, name = value.rpartition("/")
        # Joining gives what parsing the whole path gives unless the folder part is
        # empty or ends in "/" ("//x" is a root of its own), or the name is "." or "..".
        if not folder or folder[-1] == "/" or name in ("", ".", ".."):
            return Path(value)
        parent = self.folders.get(folder)
        if parent is None:
            parent = self.folders[folder] = Path(folder)
        return _child(parent, name)


def _child(folder: Path, name: str) -> Path:
    """``folder / name`` for a plain name ("" "." ".." excluded), cheaper on Python 3.11.

    ``Path._make_child_relpath`` is the join pathlib itself uses for walking folders
    (a third of the plain join's cost); a Python without it gets the plain join. The
    tests compare the paths made with parsed ones.
    """
    return folder / name if _join is None else _join(folder, name)


_join = getattr(Path, "_make_child_relpath", None)


def _is_text(value: Any) -> bool:
    return value is None or type(value) is str


def _plain_dict(value: Any) -> dict[str, Any] | None:
    """A ``dict[str, Any]`` field's value as validation makes it: a shallow copy."""
    if value is None:
        return None
    if type(value) is not dict or not all(type(key) is str for key in value):
        raise _Unusual
    return dict(value)


def _model(cls: type[M], fields: dict[str, Any], fields_set: set[str], private: Any = None) -> M:
    """An instance of ``cls`` holding ``fields`` (complete, in field order), unvalidated:
    what ``model_construct`` makes, without its per-field work."""
    model = _new(cls)
    _set_dict(model, fields)
    _set_fields_set(model, fields_set)
    _set_extra(model, None)
    _set_private(model, private)
    return model


_new = object.__new__
# The slots every pydantic model has, set through their descriptors (what
# ``object.__setattr__`` does, a little faster).
_set_dict = vars(BaseModel)["__dict__"].__set__
_set_fields_set = vars(BaseModel)["__pydantic_fields_set__"].__set__
_set_extra = vars(BaseModel)["__pydantic_extra__"].__set__
_set_private = vars(BaseModel)["__pydantic_private__"].__set__


def _done_data(name: str, record: StepRecord, step: Step) -> dict[str, Any]:
    runs = []
    for index in range(len(step.members())):
        member = record.members[index]
        result = member.result or {}
        runs.append(
            {
                "index": index,
                "run_id": member.run_id or result.get("run_id"),
                "state": result.get("state"),
                "params": json_params(step, index),
                "origin": "recorded",
                "result": member.result,
            }
        )
    stages = {}
    for stage, info in record.stages.items():
        message = info.get("message")
        stages[stage] = {
            "state": str(info.get("state") or "PENDING"),
            "started_at": info.get("started"),
            "ended_at": info.get("time") if info.get("state") != "RUNNING" else None,
            "message": None if message is None else str(message),
        }
    return {
        "name": name,
        "state": StepState.SUCCEEDED,
        "resumed": True,
        "digest": record.digest,
        "reason": EARLIER,
        "started_at": record.started,
        "ended_at": record.ended,
        "stages": stages,
        "runs": runs,
        "postprocess_results": record.postprocess,
    }


@functools.cache
def _done_adapter() -> TypeAdapter[list[StepReport]]:
    return TypeAdapter(list[StepReport])


@functools.cache
def _times_adapter() -> TypeAdapter[list[datetime | None]]:
    return TypeAdapter(list[datetime | None])
