"""What an earlier run of a pipeline left: steps to skip, runs to keep or re-attach.

The journal's replay is compared with the pipeline as defined now: a step whose
digest, upstream steps and runs all still stand is *done* and reported from its
record without running; a step whose definition changed (or whose upstream did)
runs *fresh*. Runs an interrupted run left going are re-attached through their
saved handles, or found by the run id journaled before they were submitted.
"""

from __future__ import annotations

from typing import Any

from ..backend import Backend
from ..call import Call
from ..errors import TetherError
from ..handle import RunHandle
from ..job import Job
from ..result import RunResult, RunState
from ._reports import all_succeeded
from ._retries import adopt
from .journal import MemberRecord, Replay, StepRecord
from .report import Origin, StepState
from .step import Step, refs_in

#: What a step that finished in an earlier run is reported and announced with.
EARLIER = "finished in an earlier run"


async def plan(
    steps: dict[str, Step], replay: Replay, digests: dict[str, str], values: dict[str, list[Any]]
) -> tuple[set[str], set[str]]:
    """Steps finished before (skipped now), and steps to run afresh.

    A done Call step whose values a step still to run needs, but which cannot be
    reloaded any more, is run again (and so is everything below it).
    """
    lost: set[str] = set()
    while True:
        done, fresh = _plan(steps, replay, digests, lost)
        missing = await _missing_values(steps, replay, done, values)
        if not missing:
            return done, fresh
        lost |= missing


def _plan(
    steps: dict[str, Step], replay: Replay, digests: dict[str, str], lost: set[str]
) -> tuple[set[str], set[str]]:
    done: set[str] = set()
    fresh: set[str] = set()
    for name, step in steps.items():  # in start order: upstream steps come first
        record = replay.steps.get(name)
        ups_done = all(up in done for up in step.upstream())
        if record is None or record.digest != digests[name] or not ups_done:
            fresh.add(name)
        elif (
            name not in lost
            and record.state == StepState.SUCCEEDED
            and all_succeeded(record, len(step.members()))
        ):
            done.add(name)
    return done, fresh


async def _missing_values(
    steps: dict[str, Step], replay: Replay, done: set[str], values: dict[str, list[Any]]
) -> set[str]:
    """Done Call steps whose values a step still to run needs but that are gone."""
    missing: set[str] = set()
    for name, step in steps.items():
        if name in done:
            continue
        for job in step.members():
            if not isinstance(job, Call):
                continue
            for ref in refs_in((job.args, job.kwargs)):
                if ref.what == "outputs" or ref.step not in done or ref.step in missing:
                    continue
                if ref.step not in values and not await load_values(
                    steps[ref.step], replay.steps[ref.step], values
                ):
                    missing.add(ref.step)
    return missing


async def load_values(step: Step, record: StepRecord, values: dict[str, list[Any]]) -> bool:
    """Reload a finished step's values through its runs' handles; False if gone."""
    loaded: list[Any] = []
    for index in range(len(step.members())):
        result = await succeeded(record.members.get(index))
        if result is None:
            return False
        loaded.append(result.value)
    values[step.name] = loaded
    return True


async def succeeded(member: MemberRecord | None) -> RunResult | None:
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


async def cancel_leftovers(record: StepRecord | None) -> None:
    """Cancel runs an earlier run of a step left going, now that it runs afresh."""
    from ..registry import handle_from_record

    if record is None:
        return
    for member in record.members.values():
        if member.handle is not None and member.result is None:
            try:
                handle = handle_from_record(member.handle)
                await handle.cancel()
            except TetherError:
                pass  # gone already: nothing to cancel


async def reattach(
    backend: Backend[Any], job: Job, member: MemberRecord | None
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
