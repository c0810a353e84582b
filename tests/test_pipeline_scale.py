"""A pipeline of thousands of steps: it runs, its state file stays O(steps) through
compaction, and it resumes to the same result (correctness only; the speed is
``bench/pipeline_scale.py``'s)."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import anyio
import pytest

from tether import DummyConfig, Job, Pipeline, Step, StepState
from tether.pipelines import journal
from tether.pipelines.journal import Journal, StepRecord

pytestmark = pytest.mark.anyio

#: Small enough to finish in seconds on a loaded 2-core machine.
STEPS = 2000
FLOOR = 64 * 1024


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def compactions(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Lower the compaction floor; record the file's size before each compaction."""
    monkeypatch.setattr(journal, "COMPACT_FLOOR", FLOOR)
    sizes: list[int] = []
    compact = Journal.compact

    def counted(self: Journal) -> None:
        sizes.append(self.path.stat().st_size)
        compact(self)

    monkeypatch.setattr(Journal, "compact", counted)
    return sizes


def wide(n: int, folder: Path, **options: Any) -> Pipeline:
    """A root step and ``n`` zero-work steps below it, on the dummy backend."""
    root = Step("root", Job(name="root", command="true"))
    steps = [Step(f"s{i}", Job(command="true"), depends_on=[root]) for i in range(n)]
    return Pipeline(
        [root, *steps],
        name="wide",
        backend=DummyConfig(runs_dir=folder / "runs", **options),
        state=folder / "state.jsonl",
    )


def states(result: Any) -> dict[str, StepState]:
    return {name: step.state for name, step in result.steps.items()}


async def test_a_large_pipeline_keeps_its_state_file_bounded(
    tmp_path: Path, compactions: list[int]
) -> None:
    pipeline = wide(STEPS, tmp_path)
    first = await pipeline.run(max_concurrency=256)
    assert first.success and len(first.steps) == STEPS + 1
    state = tmp_path / "state.jsonl"
    final = state.stat().st_size
    # A normal run's log is O(steps) as it is: compacted once, at the end.
    assert len(compactions) == 1 and compactions[0] <= 3 * final
    # O(steps): a tenth of the pipeline takes a tenth of the bytes per step, give or take.
    small = tmp_path / "small"
    await wide(STEPS // 10, small).run()
    per_step = final / (STEPS + 1)
    small_per_step = (small / "state.jsonl").stat().st_size / (STEPS // 10 + 1)
    assert 0.8 < per_step / small_per_step < 1.2
    # The header, and per step its snapshot line and its runs' handles.
    events = [json.loads(raw) for raw in state.read_bytes().splitlines()]
    assert [e["e"] for e in events] == ["pipeline"] + ["snapshot", "handles"] * (STEPS + 1)
    assert events[0]["version"] == journal.VERSION

    # Resuming the finished pipeline runs nothing and leaves the file as it was.
    before = state.read_bytes()
    count = len(compactions)
    again = await wide(STEPS, tmp_path).run(max_concurrency=256)
    assert states(again) == states(first)
    assert all(step.resumed for step in again.steps.values())
    assert [run.run_id for step in again.steps.values() for run in step.runs] == [
        run.run_id for step in first.steps.values() for run in step.runs
    ]
    assert again.steps["s7"].runs[0].result == first.steps["s7"].runs[0].result
    assert state.read_bytes() == before and len(compactions) == count


def test_superseded_lines_are_compacted_away(tmp_path: Path, compactions: list[int]) -> None:
    """Lines that replace what a step's runs recorded (retry attempts, say) beyond a
    normal run's budget are compacted mid-run: the file stays near its snapshot."""
    j = Journal(tmp_path / "state.jsonl", "p")
    j.open()
    for i in range(200):
        j.append({"e": "step", "step": f"s{i}", "digest": "d", "state": "RUNNING"})
        j.append({"e": "member", "step": f"s{i}", "member": 0, "run_id": f"s{i}-0"})
    for attempt in range(300):
        for i in range(200):
            handle = {"run_id": f"s{i}-0", "attempt": attempt, "pad": "x" * 200}
            j.append({"e": "member", "step": f"s{i}", "member": 0, "handle": handle})
    j.close()
    assert len(compactions) >= 3
    path = tmp_path / "state.jsonl"
    snapshot = sum(len(raw) + 1 for raw in path.read_bytes().splitlines()[:401])
    line = max(len(raw) for raw in path.read_bytes().splitlines())
    # What a normal run may add per step (no compaction for that), then the excess.
    budget = (journal.STEP_LINES + journal.MEMBER_LINES) * 200 * line
    for size in compactions:
        assert size <= (1 + journal.COMPACT_RATIO) * snapshot + FLOOR + budget + line
    assert 5 * max(compactions) < 300 * 200 * 200  # far less than all that was appended
    assert journal.read(path).steps["s7"].members[0].handle == {
        "run_id": "s7-0",
        "attempt": 299,
        "pad": "x" * 200,
    }


async def test_an_interrupted_large_pipeline_resumes(tmp_path: Path) -> None:
    """Cancelled once many steps ended, resumed: what finished stays finished."""
    # 600 runs of 0.2 s, 16 at a time: 7.5 s at least, so the cancel lands mid-run
    # even when a loaded machine delivers the events late.
    pipeline = wide(600, tmp_path, duration=0.2)
    with pipeline.events() as events:
        async with anyio.create_task_group() as group:
            group.start_soon(functools.partial(pipeline.run, max_concurrency=16))
            ended = 0
            async for event in events:
                if event.kind == "step" and event.state == "SUCCEEDED":
                    ended += 1
                    if ended == 100:
                        break
            group.cancel_scope.cancel()
    recorded = journal.read(tmp_path / "state.jsonl")
    done = {name for name, step in recorded.steps.items() if step.state == "SUCCEEDED"}
    assert 100 <= len(done) < 601
    result = await wide(600, tmp_path, duration=0.2).run(max_concurrency=128)
    assert result.success
    assert {name for name, step in result.steps.items() if step.resumed} == done
    replay = journal.read(tmp_path / "state.jsonl")
    assert {step.state for step in replay.steps.values()} == {"SUCCEEDED"}


def _version_1(replay: journal.Replay, name: str) -> str:
    """The lines version 1 of the state file held for ``replay`` (events only)."""
    lines: list[dict[str, Any]] = [
        {"e": "pipeline", "version": 1, "name": name, "time": replay.created}
    ]
    for step_name, step in replay.steps.items():
        assert isinstance(step, StepRecord)
        lines.append(
            {"e": "step", "step": step_name, "digest": step.digest, "state": "RUNNING"}
            | {"time": step.started}
        )
        for index, member in sorted(step.members.items()):
            event: dict[str, Any] = {"e": "member", "step": step_name, "member": index}
            event |= {"run_id": member.run_id, "handle": member.handle, "result": member.result}
            lines.append(event)
        for stage, info in step.stages.items():
            lines.append({"e": "stage", "step": step_name, "stage": stage, **info})
        lines.append(
            {"e": "step", "step": step_name, "digest": step.digest, "state": step.state}
            | {"reason": step.reason, "time": step.ended}
        )
    return "".join(json.dumps(line) + "\n" for line in lines)


async def test_a_version_1_state_file_resumes_and_becomes_version_2(tmp_path: Path) -> None:
    first = await wide(50, tmp_path).run()
    state = tmp_path / "state.jsonl"
    replay = journal.read(state)
    state.write_text(_version_1(replay, "wide"))
    assert journal.read(state) == replay  # read as it is
    again = await wide(50, tmp_path).run()
    assert all(step.resumed for step in again.steps.values())
    assert states(again) == states(first)
    header = json.loads(state.read_text().splitlines()[0])
    assert header["version"] == journal.VERSION  # compacted on opening
    assert journal.read(state) == replay
