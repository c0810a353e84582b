"""What a pipeline run reports: every stage of every step, and the events on the way."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from .. import _html
from ..result import RunResult, RunState


class StepState(StrEnum):
    """Where a step is. SUCCEEDED, FAILED, SKIPPED and CANCELLED are final for a run."""

    PENDING = "PENDING"  # waiting for the steps it depends on
    RUNNING = "RUNNING"  # staging, running or postprocessing
    SUCCEEDED = "SUCCEEDED"  # every run and every postprocessor succeeded
    FAILED = "FAILED"  # a run or a postprocessor did not succeed (see reason)
    SKIPPED = "SKIPPED"  # never started: an upstream step did not succeed, or fail-fast
    CANCELLED = "CANCELLED"  # stopped while running: fail-fast, or the pipeline was cancelled


#: How a run of a step came about (see ``MemberReport.origin``).
Origin = Literal["submitted", "reattached", "found", "recorded"]


class StageReport(BaseModel):
    """One stage of a step: ``generate`` (stage inputs), ``run`` or ``postprocess``."""

    model_config = ConfigDict(extra="forbid")

    state: str = "PENDING"
    started_at: datetime | None = None
    ended_at: datetime | None = None
    message: str | None = None


class MemberReport(BaseModel):
    """One run of a step (one member of a fan-out)."""

    model_config = ConfigDict(extra="forbid")

    index: int
    run_id: str | None = None
    state: RunState | None = None
    #: The parameter set of this member (fan-out with ``over``), JSON-ready.
    params: dict[str, Any] | None = None
    #: How the run came about: "submitted", "reattached" (resumed and still
    #: running), "found" (found by run id after a crash), or "recorded" (finished before).
    origin: Origin | None = None
    result: RunResult | None = None
    #: How many attempts a retried run took (None: the step has no retry policy).
    attempts: int | None = None


class StepReport(BaseModel):
    """Everything about one step: its state and reason, stages, runs and postprocessing."""

    model_config = ConfigDict(extra="forbid")

    name: str
    state: StepState = StepState.PENDING
    reason: str | None = None
    digest: str = ""
    #: True when the step finished in an earlier run and was not run again.
    resumed: bool = False
    started_at: datetime | None = None
    ended_at: datetime | None = None
    stages: dict[str, StageReport] = Field(default_factory=dict)
    runs: list[MemberReport] = Field(default_factory=list)
    postprocess_results: list[dict[str, Any]] = Field(default_factory=list)

    def _repr_html_(self) -> str:
        return _html.step_html(self)

    @property
    def outputs(self) -> list[Path]:
        """Every run's output files, in member order."""
        return [p for run in self.runs if run.result is not None for p in run.result.outputs]

    @property
    def run_success(self) -> bool:
        """True when the step has runs and all of them succeeded."""
        return bool(self.runs) and all(run.state is RunState.SUCCEEDED for run in self.runs)


class PipelineResult(BaseModel):
    """The outcome of ``Pipeline.run``: rompy's keys, and every step in full.

    ``result["success"]``, ``result["run_success"]``, ``result["postprocess_results"]``,
    ``result["stage"]``, ``result["stages_completed"]`` and ``result["message"]`` work
    as with rompy's pipeline dict.
    """

    model_config = ConfigDict(extra="forbid")

    name: str
    success: bool
    #: True when every run of every job step succeeded.
    run_success: bool
    #: Step name → its postprocessors' reports.
    postprocess_results: dict[str, list[dict[str, Any]]]
    steps: dict[str, StepReport]
    state_file: Path | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None

    _values: dict[str, list[Any]] = PrivateAttr(default_factory=dict)
    _fanned_out: set[str] = PrivateAttr(default_factory=set)

    def _repr_html_(self) -> str:
        return _html.pipeline_html(self)

    def __repr__(self) -> str:
        # asyncio.run (3.11) reprs its main task, and so this result, as it restores the
        # SIGINT handler: keep it quick for a large pipeline.
        steps = ", ".join([f"{name}={step.state.value}" for name, step in self.steps.items()])
        return f"<PipelineResult {self.name!r} success={self.success} steps: {steps}>"

    def __getitem__(self, key: str) -> Any:
        if key in _KEYS:
            return getattr(self, key)
        raise KeyError(key)

    def _stage_name(self, step: str, stage: str) -> str:
        return stage if len(self.steps) == 1 else f"{step}:{stage}"

    @property
    def stages_completed(self) -> list[str]:
        """The stages that succeeded, in order (rompy's ``generate``, ``run``,
        ``postprocess``; ``step:stage`` when the pipeline has several steps)."""
        return [
            self._stage_name(name, stage)
            for name, step in self.steps.items()
            for stage, report in step.stages.items()
            if report.state == "SUCCEEDED"
        ]

    def _first_failure(self) -> tuple[str, str | None, str | None] | None:
        """The first step that did not succeed: its name, the stage and the reason."""
        for name, step in self.steps.items():
            if step.state is StepState.SUCCEEDED:
                continue
            for stage, report in step.stages.items():
                if report.state != "SUCCEEDED":
                    return name, stage, report.message or step.reason
            return name, None, step.reason
        return None

    @property
    def stage(self) -> str | None:
        """The stage that failed (rompy's ``stage``), else the last one that ran."""
        failure = self._first_failure()
        if failure is not None:
            name, stage, _ = failure
            return None if stage is None else self._stage_name(name, stage)
        completed = self.stages_completed
        return completed[-1] if completed else None

    @property
    def message(self) -> str:
        """One line on how the pipeline went (rompy's ``message``)."""
        failure = self._first_failure()
        if failure is None:
            return f"Pipeline {self.name!r} completed successfully"
        name, stage, reason = failure
        where = f"step {name!r}" + (f" failed at its {stage} stage" if stage else " did not run")
        return f"Pipeline {self.name!r}: {where}" + (f": {reason}" if reason else "")

    def value(self, step: str) -> Any:
        """A step's return value (a Call step; a list for a fanned-out step)."""
        if step not in self.steps:
            raise KeyError(f"no step {step!r} in pipeline {self.name!r}")
        values = self._values.get(step)
        if values is None:
            return None  # not a Call step, or it never ran
        return values[0] if step not in self._fanned_out else list(values)

    def failed(self) -> list[str]:
        """Names of the steps that did not succeed (failed, skipped or cancelled)."""
        return [name for name, step in self.steps.items() if step.state is not StepState.SUCCEEDED]


_KEYS = (
    "success",
    "run_success",
    "postprocess_results",
    "steps",
    "stage",
    "stages_completed",
    "message",
)


class PipelineEvent(BaseModel):
    """One change: of the pipeline, a step, a stage, a run, or a postprocessor's report."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["pipeline", "step", "stage", "run", "postprocess"]
    state: str
    step: str | None = None
    stage: str | None = None
    member: int | None = None
    run_id: str | None = None
    message: str | None = None
    time: datetime

    def __str__(self) -> str:
        where = self.step or "pipeline"
        if self.stage:
            where += f" {self.stage}"
        if self.member is not None:
            where += f"[{self.member}]"
        text = f"{where}: {self.state}"
        return f"{text} ({self.message})" if self.message else text
