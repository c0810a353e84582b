"""One run of a pipeline: the step tasks, their stages and runs, and the report.

The pieces around it: :mod:`._backends` (each step's backend), :mod:`._resume`
(what an earlier run left), :mod:`._generate` (the generate stage) and
:mod:`._recorder` (reports, journal lines and events).
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectSendStream

from .._live import pipeline_table
from .._runs import new_run_id
from ..backend import Backend
from ..call import Call
from ..errors import TetherError
from ..job import Job
from ..postprocess.base import Postprocessor, processor_name, run_postprocessor
from ..result import RunResult, RunState
from . import _resume, _resumed
from ._backends import StepBackends, submit
from ._generate import generate
from ._recorder import Recorder
from ._reports import json_params, recorded_result, when
from ._retries import journal_attempts
from .journal import Journal, MemberRecord, Replay
from .report import MemberReport, PipelineEvent, PipelineResult, StepReport, StepState
from .step import Step

if TYPE_CHECKING:
    from .runner import Pipeline


class _Run:
    """One ``Pipeline.run``: the plan, the step tasks, the journal and the report."""

    def __init__(
        self,
        pipeline: Pipeline,
        max_concurrency: int,
        fail_fast: bool,
        state: Path | None,
        subscribers: list[MemoryObjectSendStream[PipelineEvent]],
        progress: bool | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.steps = pipeline.steps
        self.fail_fast = fail_fast
        self.limiter = anyio.CapacityLimiter(max_concurrency)
        self.journal = Journal(state, pipeline.name) if state is not None else None
        self.state = state
        #: Step name → its report, in start order: made once the plan is known (a
        #: step done before gets its recorded report, not a pending one first).
        self.reports: dict[str, StepReport] = {}
        self.values: dict[str, list[Any]] = {}
        #: Steps that ended (or were done before), and events for those awaited before.
        self._ended: set[str] = set()
        self._waiters: dict[str, anyio.Event] = {}
        self.step_backends = StepBackends(pipeline)
        self.backends: dict[str, Backend[Any]] = {}
        self.digests: dict[str, str] = {}
        self.replay = Replay()
        self.stop_reason: str | None = None
        self.group: anyio.abc.TaskGroup | None = None
        #: Step name → the task group of its runs, cancelled by fail-fast at once.
        self.member_groups: dict[str, anyio.abc.TaskGroup] = {}
        #: The notebook's live table of the steps (silent outside a Jupyter kernel).
        live = pipeline_table(
            pipeline.name,
            {name: len(step.members()) for name, step in self.steps.items()},
            progress=progress,
        )
        self.rec = Recorder(self.journal, subscribers, live, self.reports, self.digests)

    @property
    def subscribers(self) -> list[MemoryObjectSendStream[PipelineEvent]]:
        """The event streams of this run (``Pipeline.events`` adds to them)."""
        return self.rec.subscribers

    # -- steps waiting for steps -----------------------------------------------------------

    async def _ended_step(self, name: str) -> None:
        """Wait until step ``name`` has ended (at once if it has)."""
        if name in self._ended:
            return
        event = self._waiters.get(name)
        if event is None:
            self._waiters[name] = event = anyio.Event()
        await event.wait()

    def _step_ended(self, name: str) -> None:
        self._ended.add(name)
        event = self._waiters.pop(name, None)
        if event is not None:
            event.set()

    # -- the run -----------------------------------------------------------------------

    async def run(self) -> PipelineResult:
        started = time.time()
        live = self.rec.live
        live.open()
        try:
            with _gc_paused():
                for name, step in self.steps.items():
                    self.backends[name] = backend = self.step_backends.backend_of(step)
                    self.digests[name] = step.digest(self.step_backends.cache_fields(backend))
                if self.journal is not None:
                    self.replay = self.journal.open()
            self.rec.emit("pipeline", "RUNNING", message=self.pipeline.name)
            done, fresh = await _resume.plan(self.steps, self.replay, self.digests, self.values)
            for name in fresh:
                await _resume.cancel_leftovers(self.replay.steps.get(name))
            with _gc_paused():
                ordered = [name for name in self.steps if name in done]
                self._fill_reports(_resumed.reports_done(ordered, self.steps, self.replay))
            for name in ordered:
                self._step_ended(name)
            if self.rec.listened:
                for name in ordered:
                    self.rec.emit("step", "SUCCEEDED", step=name, message=_resume.EARLIER)
            if len(done) < len(self.steps):
                async with anyio.create_task_group() as group:
                    self.group = group
                    for name in self.steps:
                        if name not in done:
                            group.start_soon(self._step, name, name in fresh)
            for name in done:  # values of resumed Call steps, for result.value()
                step = self.steps[name]
                if name not in self.values and _has_calls(step):
                    await _resume.load_values(step, self.replay.steps[name], self.values)
            return self._result(started)
        finally:
            self._fill_reports({})  # when it ended before the plan was made
            if self.journal is not None:
                try:
                    if self.journal.dirty:  # a resumed, finished pipeline changed nothing
                        self.journal.compact()
                finally:
                    self.journal.close()
            success = all(r.state is StepState.SUCCEEDED for r in self.reports.values())
            self.rec.emit("pipeline", "SUCCEEDED" if success else "FAILED")
            live.close()
            self.rec.close()

    def _fill_reports(self, done: dict[str, StepReport]) -> None:
        """Give every step its report (once): from ``done``, else a pending one."""
        if not self.reports:
            for name in self.steps:
                report = done.get(name)
                self.reports[name] = StepReport(name=name) if report is None else report

    def _result(self, started: float) -> PipelineResult:
        reports = self.reports
        job_steps = [name for name, step in self.steps.items() if step.job is not None]
        result = PipelineResult(
            name=self.pipeline.name,
            success=all(r.state is StepState.SUCCEEDED for r in reports.values()),
            run_success=all(reports[name].run_success for name in job_steps),
            postprocess_results={
                name: reports[name].postprocess_results
                for name, step in self.steps.items()
                if step.processor is not None
            },
            steps=dict(reports),
            state_file=self.state,
            started_at=when(started),
            ended_at=datetime.now(UTC),
        )
        result._values = dict(self.values)
        result._fanned_out = {name for name, step in self.steps.items() if step.fanned_out}
        return result

    # -- one step ----------------------------------------------------------------------

    async def _step(self, name: str, fresh: bool) -> None:
        step = self.steps[name]
        report = self.reports[name]
        try:
            for up in step.upstream():
                await self._ended_step(up)
            blocked = [
                up for up in step.upstream() if self.reports[up].state != StepState.SUCCEEDED
            ]
            if blocked:
                up = blocked[0]
                reason = f"upstream step {up!r} {self.reports[up].state}"
                self.rec.end(name, StepState.SKIPPED, reason)
                return
            self.rec.start(name, fresh)
            await self._stages(name, step, report, fresh)
        except anyio.get_cancelled_exc_class():
            reason = self.stop_reason or "the pipeline was cancelled"
            if report.state is StepState.PENDING:
                self.rec.end(name, StepState.SKIPPED, reason)
            elif report.state is StepState.RUNNING:
                for stage, info in list(report.stages.items()):
                    if info.state == "RUNNING":
                        self.rec.stage(name, stage, "CANCELLED", reason)
                self.rec.end(name, StepState.CANCELLED, reason)
            raise
        finally:
            self._step_ended(name)

    async def _stages(self, name: str, step: Step, report: StepReport, fresh: bool) -> None:
        rec = self.rec
        rec.stage(name, "generate", "RUNNING")
        try:
            jobs = generate(step, self.steps, self.reports, self.values)
        except (TetherError, OSError) as exc:
            rec.stage(name, "generate", "FAILED", str(exc))
            self._fail(name, f"generate: {exc}")
            return
        rec.stage(name, "generate", "SUCCEEDED")
        if step.job is not None:
            rec.stage(name, "run", "RUNNING")
            report.runs = [
                MemberReport(index=i, params=json_params(step, i)) for i in range(len(jobs))
            ]
            self.values[name] = [None] * len(jobs)
            record = None if fresh else self.replay.steps.get(name)
            async with anyio.create_task_group() as group:
                self.member_groups[name] = group
                for index, job in enumerate(jobs):
                    member = record.members.get(index) if record is not None else None
                    group.start_soon(self._member, name, index, job, member)
            self.member_groups.pop(name, None)
            bad = [run for run in report.runs if run.state is not RunState.SUCCEEDED]
            if bad:
                # Name a run that failed on its own, not one fail-fast cancelled after it.
                first = min(bad, key=lambda run: run.state in (RunState.CANCELLED, None))
                why = first.result.error if first.result is not None else None
                message = (
                    f"{len(bad)} of {len(report.runs)} runs did not succeed; run "
                    f"{first.index} ({first.run_id}) {first.state}" + (f": {why}" if why else "")
                )
                rec.stage(name, "run", "FAILED", message)
                self._fail(name, message)
                return
            rec.stage(name, "run", "SUCCEEDED")
            targets = [run.result for run in report.runs if run.result is not None]
        else:
            targets = [
                run.result
                for up in step.upstream()
                for run in self.reports[up].runs
                if run.result is not None
            ]
        if step.processor is not None:
            await self._postprocess(name, step.processor, step.process_kwargs, targets)
            if report.state is not StepState.RUNNING:
                return
        rec.end(name, StepState.SUCCEEDED)

    # -- one run of a step -----------------------------------------------------------------

    async def _member(self, name: str, index: int, job: Job, member: MemberRecord | None) -> None:
        """Bring one run to its end: kept, re-attached, found, or submitted now."""
        report = self.reports[name].runs[index]
        step = self.steps[name]
        rec = self.rec
        if member is not None and member.result is not None:
            kept = recorded_result(member.result)
            if kept.ok and await self._keep(name, index, job, member, kept):
                report.run_id, report.state, report.origin = kept.run_id, kept.state, "recorded"
                return
        backend = self.backends[name]
        async with self.limiter:
            found, origin = await _resume.reattach(backend, job, member)
            if found is not None:
                handle = found
                if origin == "found" and rec.journaling:  # its submitter died before journaling
                    rec.record(
                        {"e": "member", "step": name, "member": index, "handle": handle.to_record()}
                    )
            else:
                run_id = new_run_id(f"{name}-{index}" if step.fanned_out else name)
                rec.record({"e": "member", "step": name, "member": index, "run_id": run_id})
                try:
                    with anyio.CancelScope(shield=True):  # a started run must be journaled
                        handle = await submit(backend, job, run_id)
                        if rec.journaling:
                            rec.record(
                                {
                                    "e": "member",
                                    "step": name,
                                    "member": index,
                                    "handle": handle.to_record(),
                                }
                            )
                except TetherError as exc:
                    result = RunResult(run_id=run_id, state=RunState.FAILED, error=str(exc))
                    self._member_end(name, index, result)
                    return
                origin = "submitted"
            report.run_id, report.origin = handle.run_id, origin
            report.state = handle.state
            journal_attempts(handle, report, rec.record, name, index)
            rec.emit(
                "run",
                handle.state.value,
                step=name,
                member=index,
                run_id=handle.run_id,
                message=None if origin == "submitted" else origin,
            )
            try:
                result = await handle.wait()
            except anyio.get_cancelled_exc_class():
                with anyio.CancelScope(shield=True):
                    await handle.cancel()
                    result = await handle.wait()
                    self._member_end(name, index, result)
                raise
            except TetherError as exc:
                result = RunResult(run_id=handle.run_id, state=RunState.LOST, error=str(exc))
            self._member_end(name, index, result)

    async def _keep(
        self, name: str, index: int, job: Job, member: MemberRecord, kept: RunResult
    ) -> bool:
        """Whether a run that succeeded before stands (a Call's value must be reloadable)."""
        if not isinstance(job, Call):
            self.reports[name].runs[index].result = kept
            return True
        result = await _resume.succeeded(member)
        if result is None:
            return False
        self.values[name][index] = result.value
        self.reports[name].runs[index].result = result
        return True

    def _member_end(self, name: str, index: int, result: RunResult) -> None:
        report = self.reports[name].runs[index]
        report.run_id, report.state, report.result = result.run_id, result.state, result
        if result.ok:
            self.values[name][index] = result.value
        elif self.fail_fast and result.state is not RunState.CANCELLED:
            group = self.member_groups.get(name)
            if group is not None:  # the step fails anyway: stop its other runs now
                group.cancel_scope.cancel()
        if self.rec.journaling:
            self.rec.record(
                {
                    "e": "member",
                    "step": name,
                    "member": index,
                    "result": result.model_dump(mode="json"),
                }
            )
        self.rec.emit(
            "run",
            result.state.value,
            step=name,
            member=index,
            run_id=result.run_id,
            message=result.error,
        )

    async def _postprocess(
        self,
        name: str,
        processor: str | Postprocessor,
        kwargs: dict[str, Any],
        targets: list[RunResult],
    ) -> None:
        rec = self.rec
        rec.stage(name, "postprocess", "RUNNING")
        reports: list[dict[str, Any]] = [{} for _ in targets]

        async def one(index: int, target: RunResult) -> None:
            async with self.limiter:
                report = await run_postprocessor(processor, target, kwargs)
            report.setdefault("run_id", target.run_id)
            reports[index] = report
            rec.record({"e": "post", "step": name, "member": index, "report": report})
            rec.emit(
                "postprocess",
                "SUCCEEDED" if report["success"] else "FAILED",
                step=name,
                member=index,
                run_id=target.run_id,
                message=report["message"],
            )

        async with anyio.create_task_group() as group:
            for index, target in enumerate(targets):
                group.start_soon(one, index, target)
        self.reports[name].postprocess_results = reports
        bad = [report for report in reports if not report.get("success")]
        if bad:
            message = (
                f"postprocessor {processor_name(processor)!r} failed for {len(bad)} of "
                f"{len(reports)} runs: {bad[0].get('message')}"
            )
            rec.stage(name, "postprocess", "FAILED", message)
            self._fail(name, message)
        else:
            rec.stage(name, "postprocess", "SUCCEEDED")

    def _fail(self, name: str, reason: str) -> None:
        self.rec.end(name, StepState.FAILED, reason)
        if self.fail_fast and self.stop_reason is None and self.group is not None:
            self.stop_reason = f"fail-fast: step {name!r} failed"
            self.group.cancel_scope.cancel()


def _has_calls(step: Step) -> bool:
    """Whether any of the step's runs is a Call (one member: its job, without a list)."""
    if not step.fanned_out:
        return isinstance(step.job, Call)
    return any(isinstance(job, Call) for job in step.members())


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection inside (synchronous code only).

    Reading a large state file and reporting its steps makes many small objects,
    none of them garbage; each full collection meanwhile would walk them all again
    (a third of a 10,000-step resume). Reference counting still frees as usual.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
