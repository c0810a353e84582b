"""One run of a pipeline: the plan, the step tasks, the journal and the report."""

from __future__ import annotations

import contextlib
import json
import time
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
from ..config import BackendConfig
from ..errors import ConfigError, TetherError
from ..handle import RunHandle
from ..job import Job
from ..postprocess.base import (
    Postprocessor,
    processor_name,
    run_postprocessor,
)
from ..result import RunResult, RunState
from ._reports import all_succeeded, json_params, member_report, now, stage_report, when
from ._retries import adopt, journal_attempts
from .graph import dependants
from .journal import Journal, MemberRecord, Replay
from .report import (
    MemberReport,
    Origin,
    PipelineEvent,
    PipelineResult,
    StageReport,
    StepReport,
    StepState,
)
from .step import Ref, Step, fill_refs, refs_in

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
        self.below = dependants(self.steps)
        self.fail_fast = fail_fast
        self.limiter = anyio.CapacityLimiter(max_concurrency)
        self.journal = Journal(state, pipeline.name) if state is not None else None
        self.state = state
        self.subscribers = subscribers
        self.reports = {name: StepReport(name=name) for name in self.steps}
        self.values: dict[str, list[Any]] = {}
        self.finished = {name: anyio.Event() for name in self.steps}
        self.backends: dict[str, Backend[Any]] = {}
        self._made: dict[Any, Backend[Any]] = {}
        self.digests: dict[str, str] = {}
        self.replay = Replay()
        self.stop_reason: str | None = None
        self.group: anyio.abc.TaskGroup | None = None
        #: Step name → the task group of its runs, cancelled by fail-fast at once.
        self.member_groups: dict[str, anyio.abc.TaskGroup] = {}
        #: The notebook's live table of the steps (silent outside a Jupyter kernel).
        self.live = pipeline_table(
            pipeline.name,
            {name: len(step.members()) for name, step in self.steps.items()},
            progress=progress,
        )

    # -- events and journal ----------------------------------------------------------

    def emit(self, kind: Any, state: str, **fields: Any) -> None:
        if not self.subscribers and not self.live.table.active:
            return
        event = PipelineEvent(kind=kind, state=state, time=datetime.now(UTC), **fields)
        self.live.event(event)
        for send in self.subscribers:
            # A subscriber that stopped listening misses the rest, nothing more.
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                send.send_nowait(event)

    def record(self, event: dict[str, Any]) -> None:
        if self.journal is not None:
            self.journal.append(event)

    # -- backends ----------------------------------------------------------------------

    def backend_of(self, step: Step) -> Backend[Any]:
        chosen = step.backend or self.pipeline.backend
        if chosen is None:
            from ..backends.local import LocalConfig

            chosen = LocalConfig()
        cache = step.cache
        retry = None if step.retry is None else step.retry.model_dump(mode="json")
        memo = (id(chosen), json.dumps([cache, retry], sort_keys=True, default=str))
        made = self._made.get(memo)
        if made is not None:
            return made
        if cache is not False:
            from ..cache.backend import CachedConfig

            inner = chosen if isinstance(chosen, BackendConfig) else chosen.config
            options = cache if isinstance(cache, dict) else {}
            try:
                chosen = CachedConfig(backend=inner, **options)
            except ValueError as exc:
                raise ConfigError(f"step {step.name!r}: invalid cache options: {exc}") from None
        backend = chosen.create() if isinstance(chosen, BackendConfig) else chosen
        if step.retry is not None:  # outside the cache: each attempt is a cache submission
            from ..retry.backend import RetryingBackend

            try:
                backend = RetryingBackend(backend, step.retry)
            except ConfigError as exc:
                raise ConfigError(f"step {step.name!r}: {exc}") from None
        self._made[memo] = backend
        return backend

    # -- the plan ----------------------------------------------------------------------

    async def plan(self) -> tuple[set[str], set[str]]:
        """Steps finished before (skipped now), and steps to run afresh."""
        lost: set[str] = set()
        while True:
            done, fresh = self._plan(lost)
            missing = await self._check_values(done)
            if not missing:
                return done, fresh
            lost |= missing

    def _plan(self, lost: set[str]) -> tuple[set[str], set[str]]:
        done: set[str] = set()
        fresh: set[str] = set()
        for name, step in self.steps.items():
            record = self.replay.steps.get(name)
            ups_done = all(up in done for up in step.upstream())
            if record is None or record.digest != self.digests[name] or not ups_done:
                fresh.add(name)
            elif (
                name not in lost
                and record.state == StepState.SUCCEEDED
                and all_succeeded(record, len(step.members()))
            ):
                done.add(name)
        return done, fresh

    async def _check_values(self, done: set[str]) -> set[str]:
        """Done Call steps whose values a step still to run needs but that are gone."""
        missing: set[str] = set()
        for name, step in self.steps.items():
            if name in done:
                continue
            for job in step.members():
                if not isinstance(job, Call):
                    continue
                for ref in refs_in((job.args, job.kwargs)):
                    if ref.what == "outputs" or ref.step not in done or ref.step in missing:
                        continue
                    if ref.step not in self.values and not await self._load_values(ref.step):
                        missing.add(ref.step)
        return missing

    async def _load_values(self, name: str) -> bool:
        """Reload a finished step's values through its runs' handles; False if gone."""
        record = self.replay.steps[name]
        values: list[Any] = []
        for index in range(len(self.steps[name].members())):
            result = await _succeeded(record.members.get(index))
            if result is None:
                return False
            values.append(result.value)
        self.values[name] = values
        return True

    async def _cancel_leftovers(self, name: str) -> None:
        """Cancel runs an earlier run of a step left going, now that it runs afresh."""
        from ..registry import handle_from_record

        record = self.replay.steps.get(name)
        if record is None:
            return
        for member in record.members.values():
            if member.handle is not None and member.result is None:
                try:
                    handle = handle_from_record(member.handle)
                    await handle.cancel()
                except TetherError:
                    pass  # gone already: nothing to cancel

    # -- the run -----------------------------------------------------------------------

    async def run(self) -> PipelineResult:
        started = time.time()
        self.live.open()
        try:
            for name, step in self.steps.items():
                self.backends[name] = backend = self.backend_of(step)
                self.digests[name] = step.digest(backend.config.cache_fields())
            if self.journal is not None:
                self.replay = self.journal.open()
            self.emit("pipeline", "RUNNING", message=self.pipeline.name)
            done, fresh = await self.plan()
            for name in fresh:
                await self._cancel_leftovers(name)
            for name in done:
                self._resume_done(name)
            async with anyio.create_task_group() as group:
                self.group = group
                for name in self.steps:
                    if name not in done:
                        group.start_soon(self._step, name, name in fresh)
            for name in done:  # values of resumed Call steps, for result.value()
                if name not in self.values and any(
                    isinstance(job, Call) for job in self.steps[name].members()
                ):
                    await self._load_values(name)
            return self._result(started)
        finally:
            if self.journal is not None:
                try:
                    self.journal.compact()
                finally:
                    self.journal.close()
            success = all(r.state is StepState.SUCCEEDED for r in self.reports.values())
            self.emit("pipeline", "SUCCEEDED" if success else "FAILED")
            self.live.close()
            for send in self.subscribers:
                send.close()

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

    def _resume_done(self, name: str) -> None:
        """Report a step that finished in an earlier run, without running it."""
        record = self.replay.steps[name]
        step = self.steps[name]
        report = self.reports[name]
        report.state = StepState.SUCCEEDED
        report.resumed = True
        report.digest = record.digest
        report.reason = "finished in an earlier run"
        report.started_at, report.ended_at = when(record.started), when(record.ended)
        report.stages = {k: stage_report(v) for k, v in record.stages.items()}
        report.runs = [
            member_report(index, record.members[index], step, "recorded")
            for index in range(len(step.members()))
        ]
        report.postprocess_results = list(record.postprocess)
        self.finished[name].set()
        self.emit("step", "SUCCEEDED", step=name, message="finished in an earlier run")

    # -- one step ----------------------------------------------------------------------

    async def _step(self, name: str, fresh: bool) -> None:
        step = self.steps[name]
        report = self.reports[name]
        try:
            for up in step.upstream():
                await self.finished[up].wait()
            blocked = [
                up for up in step.upstream() if self.reports[up].state != StepState.SUCCEEDED
            ]
            if blocked:
                up = blocked[0]
                self._end(name, StepState.SKIPPED, f"upstream step {up!r} {self.reports[up].state}")
                return
            self._start(name, fresh)
            await self._stages(name, step, report, fresh)
        except anyio.get_cancelled_exc_class():
            reason = self.stop_reason or "the pipeline was cancelled"
            if report.state is StepState.PENDING:
                self._end(name, StepState.SKIPPED, reason)
            elif report.state is StepState.RUNNING:
                for stage, info in list(report.stages.items()):
                    if info.state == "RUNNING":
                        self._stage(name, stage, "CANCELLED", reason)
                self._end(name, StepState.CANCELLED, reason)
            raise
        finally:
            self.finished[name].set()

    async def _stages(self, name: str, step: Step, report: StepReport, fresh: bool) -> None:
        self._stage(name, "generate", "RUNNING")
        try:
            jobs = self._generate(step)
        except (TetherError, OSError) as exc:
            self._stage(name, "generate", "FAILED", str(exc))
            self._fail(name, f"generate: {exc}")
            return
        self._stage(name, "generate", "SUCCEEDED")
        if step.job is not None:
            self._stage(name, "run", "RUNNING")
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
                self._stage(name, "run", "FAILED", message)
                self._fail(name, message)
                return
            self._stage(name, "run", "SUCCEEDED")
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
        self._end(name, StepState.SUCCEEDED)

    def _generate(self, step: Step) -> list[Job]:
        """The step's member jobs with upstream values and output files filled in."""
        staged: list[Path] = []
        for up in step.inputs_from:
            staged += self.reports[up].outputs
        if staged:
            seen: dict[str, Path] = {}
            for path in staged:
                if path.name in seen:
                    raise ConfigError(
                        f"step {step.name!r}: inputs from {', '.join(step.inputs_from)} collide "
                        f"on the name {path.name!r} ({seen[path.name]} and {path}); give the "
                        "outputs distinct names, or pass them to a Call as step.outputs"
                    )
                seen[path.name] = path
        jobs = []
        for job in step.members():
            if isinstance(job, Call):
                arguments = (job.args, job.kwargs)
                if any(True for _ in refs_in(arguments)):
                    args, kwargs = fill_refs(arguments, self._ref_value)
                    job = job.with_arguments(*args, **kwargs)
            if staged:
                job = _with_inputs(job, staged)
            jobs.append(job)
        return jobs

    def _ref_value(self, ref: Ref) -> Any:
        report = self.reports[ref.step]
        runs = report.runs
        if ref.what == "outputs":
            return report.outputs
        if ref.what == "result":
            results = [run.result for run in runs]
            return results[0] if len(runs) == 1 and not self.steps[ref.step].fanned_out else results
        values = self.values.get(ref.step, [])
        if not self.steps[ref.step].fanned_out:
            return values[0] if values else None
        return list(values)

    async def _member(self, name: str, index: int, job: Job, member: MemberRecord | None) -> None:
        """Bring one run to its end: kept, re-attached, found, or submitted now."""
        report = self.reports[name].runs[index]
        step = self.steps[name]
        if member is not None and member.result is not None:
            kept = RunResult.model_validate(member.result)
            if kept.ok and await self._keep(name, index, job, member, kept):
                report.run_id, report.state, report.origin = kept.run_id, kept.state, "recorded"
                return
        backend = self.backends[name]
        async with self.limiter:
            found, origin = await self._resume_member(backend, job, member)
            if found is not None:
                handle = found
                if origin == "found":  # its submitter died before journaling the handle
                    self.record(
                        {"e": "member", "step": name, "member": index, "handle": handle.to_record()}
                    )
            else:
                run_id = new_run_id(f"{name}-{index}" if step.fanned_out else name)
                self.record({"e": "member", "step": name, "member": index, "run_id": run_id})
                try:
                    with anyio.CancelScope(shield=True):  # a started run must be journaled
                        handle = await _submit(backend, job, run_id)
                        self.record(
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
            journal_attempts(handle, report, self.record, name, index)
            self.emit(
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
        result = await _succeeded(member)
        if result is None:
            return False
        self.values[name][index] = result.value
        self.reports[name].runs[index].result = result
        return True

    async def _resume_member(
        self, backend: Backend[Any], job: Job, member: MemberRecord | None
    ) -> tuple[RunHandle | None, Origin]:
        """The run an earlier, interrupted pipeline run left going, if it can be found."""
        if member is None or member.result is not None:
            return None, "submitted"
        handle: RunHandle | None = None
        origin: Origin = "submitted"
        try:
            if member.handle is not None:
                from ..registry import handle_from_record

                handle, origin = handle_from_record(member.handle), "reattached"
                adopt(handle, job, backend)
                await handle.refresh()
            elif member.run_id is not None and "find" in backend.capabilities:
                handle, origin = await backend.find(job, member.run_id), "found"
        except TetherError:
            return None, "submitted"
        if handle is None or handle.state is RunState.LOST:
            return None, "submitted"  # never started, or cannot be found: run it now
        return handle, origin

    def _member_end(self, name: str, index: int, result: RunResult) -> None:
        report = self.reports[name].runs[index]
        report.run_id, report.state, report.result = result.run_id, result.state, result
        if result.ok:
            self.values[name][index] = result.value
        elif self.fail_fast and result.state is not RunState.CANCELLED:
            group = self.member_groups.get(name)
            if group is not None:  # the step fails anyway: stop its other runs now
                group.cancel_scope.cancel()
        self.record(
            {"e": "member", "step": name, "member": index, "result": result.model_dump(mode="json")}
        )
        self.emit(
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
        self._stage(name, "postprocess", "RUNNING")
        reports: list[dict[str, Any]] = [{} for _ in targets]

        async def one(index: int, target: RunResult) -> None:
            async with self.limiter:
                report = await run_postprocessor(processor, target, kwargs)
            report.setdefault("run_id", target.run_id)
            reports[index] = report
            self.record({"e": "post", "step": name, "member": index, "report": report})
            self.emit(
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
            self._stage(name, "postprocess", "FAILED", message)
            self._fail(name, message)
        else:
            self._stage(name, "postprocess", "SUCCEEDED")

    # -- transitions ---------------------------------------------------------------------

    def _start(self, name: str, fresh: bool) -> None:
        report = self.reports[name]
        report.state, report.started_at, report.digest = (
            StepState.RUNNING,
            now(),
            self.digests[name],
        )
        event: dict[str, Any] = {
            "e": "step",
            "step": name,
            "digest": self.digests[name],
            "state": "RUNNING",
        }
        if fresh:
            event["fresh"] = True
        self.record(event)
        self.emit("step", "RUNNING", step=name)

    def _stage(self, name: str, stage: str, state: str, message: str | None = None) -> None:
        report = self.reports[name].stages.setdefault(stage, StageReport())
        now = time.time()
        if state == "RUNNING":
            report.started_at = when(now)
        else:
            report.ended_at = when(now)
        report.state, report.message = state, message
        self.record(
            {
                "e": "stage",
                "step": name,
                "stage": stage,
                "state": state,
                "message": message,
                "started": report.started_at and report.started_at.timestamp(),
                "time": now,
            }
        )
        self.emit("stage", state, step=name, stage=stage, message=message)

    def _end(self, name: str, state: StepState, reason: str | None = None) -> None:
        report = self.reports[name]
        report.state, report.reason, report.ended_at = state, reason, now()
        if not report.digest:
            report.digest = self.digests[name]
        self.record(
            {
                "e": "step",
                "step": name,
                "digest": self.digests[name],
                "state": state.value,
                "reason": reason,
            }
        )
        self.emit("step", state.value, step=name, message=reason)

    def _fail(self, name: str, reason: str) -> None:
        self._end(name, StepState.FAILED, reason)
        if self.fail_fast and self.stop_reason is None and self.group is not None:
            self.stop_reason = f"fail-fast: step {name!r} failed"
            self.group.cancel_scope.cancel()


async def _succeeded(member: MemberRecord | None) -> RunResult | None:
    """A recorded run's result through its reloaded handle (with a Call's value),
    or None when it cannot be reloaded or did not succeed."""
    from ..registry import handle_from_record

    if member is None or member.handle is None:
        return None
    try:
        handle = handle_from_record(member.handle)
        await handle.refresh()
    except TetherError:
        return None
    result = handle.last_result
    return result if result is not None and result.ok else None


def _with_inputs(job: Job, staged: list[Path]) -> Job:
    inputs = [*job.inputs, *staged]
    if isinstance(job, Call):
        return job.options(inputs=inputs)
    return job.model_copy(update={"inputs": inputs})


async def _submit(backend: Backend[Any], job: Job, run_id: str) -> RunHandle:
    if "find" in backend.capabilities:
        return await backend.submit(job, run_id=run_id)  # type: ignore[call-arg]
    return await backend.submit(job)
