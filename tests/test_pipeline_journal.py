"""The pipeline state file (``tether.pipelines.journal``): replay, torn and corrupt
lines, foreign files, the lock, compaction and the file's mode."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from tether import ConfigError, DummyConfig, Job, LocalConfig, Pipeline, Step, StepState
from tether.pipelines import journal
from tether.pipelines.journal import Journal, Replay

pytestmark = pytest.mark.anyio

JOB = Job(command="true")
QUICK = DummyConfig(duration=0.05)


@pytest.fixture
def anyio_backend() -> str:
    """asyncio by default; tests marked ``trio`` run under both loops."""
    return "asyncio"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "anyio_backend" in metafunc.fixturenames and metafunc.definition.get_closest_marker("trio"):
        metafunc.parametrize("anyio_backend", ["asyncio", "trio"])


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def write_lines(path: Path, events: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(event) + "\n" for event in events))


HEADER = {"e": "pipeline", "version": journal.VERSION, "name": "p", "time": 100.0}


def a_history(j: Journal) -> None:
    """Two runs' worth of transitions: a step re-run after a change, resubmissions,
    stages, postprocessor reports, a skipped step and one still running."""
    add = j.append
    add({"e": "step", "step": "a", "digest": "d1", "state": "RUNNING", "fresh": True})
    add({"e": "stage", "step": "a", "stage": "generate", "state": "RUNNING", "started": 1.0})
    add({"e": "stage", "step": "a", "stage": "generate", "state": "SUCCEEDED", "started": 1.0})
    add({"e": "stage", "step": "a", "stage": "run", "state": "RUNNING", "started": 1.5})
    for member in (0, 1):
        add({"e": "member", "step": "a", "member": member, "run_id": f"a-{member}-x"})
        add({"e": "member", "step": "a", "member": member, "handle": {"run_id": f"a-{member}"}})
    add({"e": "member", "step": "a", "member": 0, "result": {"state": "SUCCEEDED", "n": 0}})
    add({"e": "member", "step": "a", "member": 1, "result": {"state": "FAILED", "n": 1}})
    add({"e": "stage", "step": "a", "stage": "run", "state": "FAILED", "message": "1 of 2"})
    add({"e": "step", "step": "a", "digest": "d1", "state": "FAILED", "reason": "1 of 2"})
    add({"e": "step", "step": "b", "digest": "db", "state": "SKIPPED", "reason": "upstream"})
    # the second run: member 1 again, then a postprocessor
    add({"e": "step", "step": "a", "digest": "d1", "state": "RUNNING"})
    add({"e": "member", "step": "a", "member": 1, "run_id": "a-1-y"})
    add({"e": "member", "step": "a", "member": 1, "handle": {"run_id": "a-1-y"}})
    add({"e": "member", "step": "a", "member": 1, "result": {"state": "SUCCEEDED", "n": 2}})
    add({"e": "stage", "step": "a", "stage": "run", "state": "SUCCEEDED", "started": 2.0})
    add({"e": "post", "step": "a", "report": {"success": True, "message": "ok"}})
    add({"e": "step", "step": "a", "digest": "d1", "state": "SUCCEEDED"})
    add({"e": "step", "step": "b", "digest": "db2", "state": "RUNNING", "fresh": True})
    add({"e": "member", "step": "b", "member": 0, "run_id": "b-0"})
    add({"e": "member", "step": "b", "member": 3, "run_id": "b-3"})
    add({"e": "member", "step": "b", "member": 3, "reset": True})


# -- replay ------------------------------------------------------------------------------------


def test_replay_folds_the_transitions(tmp_path: Path) -> None:
    path = tmp_path / "state.jsonl"
    j = Journal(path, "p")
    j.open()
    a_history(j)
    j.close()
    replay = journal.read(path)
    assert replay.name == "p" and not replay.torn
    a, b = replay.steps["a"], replay.steps["b"]
    assert (a.digest, a.state, a.reason) == ("d1", "SUCCEEDED", None)
    assert a.started is not None and a.ended is not None and a.started <= a.ended
    # the handle names the run the backend made
    assert a.members[0].run_id == "a-0" and a.members[0].result == {"state": "SUCCEEDED", "n": 0}
    # a resubmission replaces what the earlier submission left
    assert a.members[1].run_id == "a-1-y"
    assert a.members[1].handle == {"run_id": "a-1-y"}
    assert a.members[1].result == {"state": "SUCCEEDED", "n": 2}
    assert a.stages["run"]["state"] == "SUCCEEDED" and a.stages["run"]["message"] is None
    assert a.stages["generate"]["state"] == "SUCCEEDED"
    assert a.postprocess == [{"success": True, "message": "ok"}]
    # a new digest (or "fresh") forgets the old definition's record; "reset" drops a member
    assert (b.digest, b.state, b.reason, b.ended) == ("db2", "RUNNING", None, None)
    assert list(b.members) == [0]
    # what the writer folded is what a reader folds
    assert (replay.name, replay.steps) == (j.replay.name, j.replay.steps)


def test_replay_of_a_missing_file_is_empty(tmp_path: Path) -> None:
    assert journal.read(tmp_path / "none.jsonl") == Replay()


def test_a_step_restarting_forgets_its_postprocess_reports() -> None:
    replay = Replay()
    journal.apply(replay, {"e": "step", "step": "a", "digest": "d", "state": "RUNNING"})
    journal.apply(replay, {"e": "post", "step": "a", "report": {"success": False}})
    journal.apply(replay, {"e": "step", "step": "a", "digest": "d", "state": "FAILED"})
    assert replay.steps["a"].postprocess == [{"success": False}]
    journal.apply(replay, {"e": "step", "step": "a", "digest": "d", "state": "RUNNING"})
    assert replay.steps["a"].postprocess == []
    assert replay.steps["a"].state == "RUNNING" and replay.steps["a"].ended is None


async def test_a_real_run_replays_to_its_report(tmp_path: Path) -> None:
    state = tmp_path / "state.jsonl"
    a = Step("a", JOB, over={"i": [1, 2]}, processor="noop")
    b = Step("b", JOB, backend=DummyConfig(outcome="failed"))
    c = Step("c", JOB, depends_on=[b])
    result = await Pipeline([a, b, c], name="real", backend=QUICK, state=state).run(fail_fast=False)
    replay = journal.read(state)
    assert replay.name == "real"
    for name, report in result.steps.items():
        record = replay.steps[name]
        assert record.state == report.state.value
        assert record.reason == report.reason
        assert record.digest == report.digest
        assert {k: v["state"] for k, v in record.stages.items()} == {
            k: v.state for k, v in report.stages.items()
        }
        for run in report.runs:
            member = record.members[run.index]
            assert member.run_id == run.run_id
            assert member.handle is not None and member.handle["run_id"] == run.run_id
            assert member.result is not None and run.result is not None
            assert member.result == run.result.model_dump(mode="json")
    assert replay.steps["a"].postprocess == result["postprocess_results"]["a"]
    assert replay.steps["c"].state == StepState.SKIPPED


# -- torn and corrupt lines ------------------------------------------------------------------


async def test_a_torn_last_line_is_ignored_and_cut_off(tmp_path: Path) -> None:
    state = tmp_path / "state.jsonl"
    log = tmp_path / "a.count"
    pipeline = Pipeline(
        [Step("a", Job(command=f"echo ran >> {log}"))], backend=LocalConfig(), state=state
    )
    await pipeline.run()
    good = state.read_bytes()
    before = journal.read(state)
    with state.open("ab") as handle:
        handle.write(b'{"e":"step","step":"a","digest":"x","sta')  # a crash mid-write
    torn = journal.read(state)
    assert torn.torn
    assert torn.steps == before.steps
    j = Journal(state, "pipeline")
    assert j.open().steps == before.steps
    j.close()
    assert state.read_bytes() == good  # cut off on open
    result = await pipeline.run()
    assert result.steps["a"].resumed
    assert len(log.read_text().splitlines()) == 1


def test_a_torn_line_is_cut_before_appending(tmp_path: Path) -> None:
    path = tmp_path / "state.jsonl"
    write_lines(path, [HEADER])
    with path.open("ab") as handle:
        handle.write(b'{"e":"step","st')
    j = Journal(path, "p")
    j.open()
    j.append({"e": "step", "step": "a", "digest": "d", "state": "RUNNING"})
    j.close()
    assert [event["e"] for event in lines(path)] == ["pipeline", "step"]
    assert journal.read(path).steps["a"].state == "RUNNING"


def test_a_corrupt_middle_line_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "state.jsonl"
    step = {"e": "step", "step": "a", "digest": "d", "state": "RUNNING"}
    path.write_text(json.dumps(HEADER) + "\n" + "{not json\n" + json.dumps(step) + "\n")
    before = path.read_bytes()
    with pytest.raises(ConfigError) as info:
        journal.read(path)
    text = str(info.value)
    assert text == (
        f"Pipeline state file '{path}' is corrupt at line 2: move it away to start afresh"
    )
    with pytest.raises(ConfigError, match="corrupt at line 2"):
        Journal(path, "p").open()
    assert path.read_bytes() == before  # left alone


async def test_a_corrupt_state_file_stops_the_pipeline(tmp_path: Path) -> None:
    path = tmp_path / "state.jsonl"
    path.write_text(json.dumps(HEADER) + "\n" + "garbage\n" + "{}\n")
    pipeline = Pipeline([Step("a", JOB)], name="p", backend=QUICK, state=path)
    with pytest.raises(ConfigError, match="corrupt at line 2"):
        await pipeline.run()


# -- files that are not this pipeline's journal --------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        '{"e": "step", "step": "a"}\n',
        '{"e": "pipeline", "version": 0, "name": "p"}\n',
        '{"type": "local", "timeout": 60}\n{"type": "dummy"}\n',
        "first line\nsecond line\n",
    ],
    ids=["no-header", "unknown-version", "json-lines", "text"],
)
def test_a_file_that_is_not_a_journal_is_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / "notes.txt"
    path.write_text(content)
    with pytest.raises(ConfigError) as info:
        Journal(path, "p").open()
    assert str(info.value).startswith(f"'{path}' is not a tether pipeline state file") or (
        "corrupt at line 1" in str(info.value)
    )
    assert "\n" not in str(info.value)
    assert path.read_text() == content  # never touched


def test_a_newer_version_says_to_upgrade(tmp_path: Path) -> None:
    path = tmp_path / "state.jsonl"
    content = '{"e": "pipeline", "version": 99, "name": "p"}\n'
    path.write_text(content)
    with pytest.raises(ConfigError) as info:
        Journal(path, "p").open()
    assert str(info.value) == (
        f"Pipeline state file '{path}' has version 99, newer than this tether reads "
        f"(up to {journal.VERSION}): upgrade tether, or give another --state path"
    )
    assert path.read_text() == content


@pytest.mark.parametrize(
    "content",
    ["my notes about the run\n", '{"type": "local", "timeout": 60}'],
    ids=["one-text-line", "json-without-newline"],
)
def test_a_foreign_file_is_never_truncated(tmp_path: Path, content: str) -> None:
    path = tmp_path / "notes.txt"
    path.write_text(content)
    with pytest.raises(ConfigError, match="is not a tether pipeline state file"):
        Journal(path, "p").open()
    assert path.read_text() == content


@pytest.mark.parametrize(
    "content",
    ["42\n", "[1, 2]\n{}\n", '"text"\n', json.dumps(HEADER) + "\n[1]\n{}\n"],
    ids=["number", "list", "string", "list-after-the-header"],
)
def test_json_that_is_not_an_object_is_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / "state.jsonl"
    path.write_text(content)
    with pytest.raises(ConfigError):
        journal.read(path)


async def test_a_state_file_of_another_pipeline_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state.jsonl"
    await Pipeline([Step("a", JOB)], name="first", backend=QUICK, state=state).run()
    before = state.read_bytes()
    other = Pipeline([Step("a", JOB)], name="second", backend=QUICK, state=state)
    with pytest.raises(ConfigError) as info:
        await other.run()
    assert str(info.value) == (
        f"Pipeline state file '{state}' belongs to pipeline 'first', not 'second': "
        "give another --state path"
    )
    assert state.read_bytes() == before


# -- the lock ------------------------------------------------------------------------------------


@pytest.mark.trio
async def test_two_pipelines_on_one_state_file(tmp_path: Path) -> None:
    state = tmp_path / "state.jsonl"

    def build() -> Pipeline:
        return Pipeline([Step("a", JOB)], name="p", backend=DummyConfig(duration=0.5), state=state)

    first = build()
    outcome: dict[str, Any] = {}

    async def run_first() -> None:
        outcome["first"] = await first.run()

    async with anyio.create_task_group() as group:
        group.start_soon(run_first)
        with anyio.fail_after(5):
            # reading needs no lock
            while "a" not in journal.read(state).steps:  # noqa: ASYNC110 (polls a file)
                await anyio.sleep(0.02)
        with pytest.raises(ConfigError) as info:
            await build().run()
        assert str(info.value) == (
            f"Pipeline state file '{state}' is in use by another running pipeline: "
            "wait for it to end, or give another --state path"
        )
    assert outcome["first"].success
    again = await build().run()  # the lock went with the first pipeline
    assert again.steps["a"].resumed


def test_the_lock_is_held_until_close(tmp_path: Path) -> None:
    path = tmp_path / "state.jsonl"
    one = Journal(path, "p")
    one.open()
    with pytest.raises(ConfigError, match="in use by another running pipeline"):
        Journal(path, "p").open()
    one.compact()  # the lock moves to the compacted file
    with pytest.raises(ConfigError, match="in use by another running pipeline"):
        Journal(path, "p").open()
    one.close()
    two = Journal(path, "p")
    two.open()
    two.close()


# -- compaction ------------------------------------------------------------------------------------


def test_compaction_keeps_the_replay_and_shortens_the_file(tmp_path: Path) -> None:
    path = tmp_path / "state.jsonl"
    j = Journal(path, "p")
    j.open()
    a_history(j)
    before, size = journal.read(path), path.stat().st_size
    j.compact()
    after = journal.read(path)
    assert (after.name, after.steps, after.torn) == (before.name, before.steps, before.torn)
    assert path.stat().st_size < size
    # appending goes on in the compacted file (and under the lock)
    j.append({"e": "step", "step": "b", "digest": "db2", "state": "SUCCEEDED"})
    j.close()
    assert journal.read(path).steps["b"].state == "SUCCEEDED"
    assert lines(path)[-1]["state"] == "SUCCEEDED"
    again = Journal(path, "p")
    again.open()
    again.compact()
    compacted = path.read_bytes()
    again.compact()
    again.close()
    assert path.read_bytes() == compacted  # compacting a compact file changes nothing


def test_compaction_keeps_the_creation_time(tmp_path: Path) -> None:
    path = tmp_path / "state.jsonl"
    j = Journal(path, "p")
    j.open()
    created = journal.read(path).created
    time.sleep(0.01)
    try:
        assert j.replay.created == created
        j.compact()
    finally:
        j.close()
    assert journal.read(path).created == created


def test_compaction_of_a_reopened_journal_keeps_everything(tmp_path: Path) -> None:
    path = tmp_path / "state.jsonl"
    j = Journal(path, "p")
    j.open()
    a_history(j)
    j.close()
    before = journal.read(path)
    again = Journal(path, "p")
    again.open()
    again.compact()
    again.close()
    assert journal.read(path) == before


async def test_resuming_does_not_grow_the_file(tmp_path: Path) -> None:
    state = tmp_path / "state.jsonl"
    pipeline = Pipeline(
        [Step("a", JOB, over={"i": [1, 2, 3]}), Step("b", JOB, depends_on=["a"])],
        backend=QUICK,
        state=state,
    )
    await pipeline.run()
    size = state.stat().st_size
    first = journal.read(state)
    for _ in range(3):
        await pipeline.run()
        assert state.stat().st_size == size
    assert journal.read(state) == first
    events = lines(state)
    # the header, then per step a snapshot line and its runs' handles, each run once
    kinds = [event["e"] for event in events]
    assert kinds == ["pipeline", "snapshot", "handles", "snapshot", "handles"]
    assert [len(event["members"]) for event in events[1::2]] == [3, 1]
    assert [len(event["handles"]) for event in events[2::2]] == [3, 1]


async def test_a_cancelled_run_is_compacted_too(tmp_path: Path) -> None:
    state = tmp_path / "state.jsonl"
    pipeline = Pipeline([Step("a", JOB)], backend=DummyConfig(duration=30), state=state)
    with anyio.move_on_after(0.3):
        await pipeline.run()
    replay = journal.read(state)
    assert replay.steps["a"].state == "CANCELLED"
    assert [event["e"] for event in lines(state)] == ["pipeline", "snapshot", "handles"]


# -- the file's mode ----------------------------------------------------------------------------


async def test_the_state_file_is_private(tmp_path: Path) -> None:
    state = tmp_path / "deep" / "state.jsonl"
    old = os.umask(0)
    try:
        await Pipeline([Step("a", JOB)], backend=QUICK, state=state).run()
    finally:
        os.umask(old)
    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    state.chmod(0o644)
    await Pipeline([Step("a", JOB)], backend=QUICK, state=state).run()
    assert stat.S_IMODE(state.stat().st_mode) == 0o600  # the next run made it private


def test_a_new_journal_is_private_before_compaction(tmp_path: Path) -> None:
    path = tmp_path / "state.jsonl"
    old = os.umask(0)
    try:
        j = Journal(path, "p")
        j.open()
    finally:
        os.umask(old)
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert lines(path)[0]["e"] == "pipeline"
    finally:
        j.close()


def test_an_unwritable_state_path_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="Cannot open pipeline state file"):
        Journal(blocker / "state.jsonl", "p").open()


# -- handles read when asked for ---------------------------------------------------------------


async def test_handles_are_read_when_asked_for(tmp_path: Path) -> None:
    state = tmp_path / "state.jsonl"
    await Pipeline([Step("a", JOB, over={"i": [1, 2]})], backend=QUICK, state=state).run()
    replay = journal.read(state)
    members = replay.steps["a"].members
    assert all(member._unread is not None for member in members.values())
    assert members[1].handle is not None and members[1].handle["run_id"] == members[1].run_id
    assert all(member._unread is None for member in members.values())  # one read for all


async def test_a_corrupt_handles_line_is_a_clear_error_when_read(tmp_path: Path) -> None:
    state = tmp_path / "state.jsonl"
    await Pipeline([Step("a", JOB)], name="p", backend=QUICK, state=state).run()
    text = state.read_text().splitlines()
    assert text[2].startswith('{"e":"handles","step":"a",')
    state.write_text("\n".join([*text[:2], '{"e":"handles","step":"a",garbage}', ""]))
    member = journal.read(state).steps["a"].members[0]
    with pytest.raises(ConfigError) as info:
        _ = member.handle
    assert str(info.value) == (
        f"Pipeline state file '{state}' is corrupt (the handles of a step): "
        "move it away to start afresh"
    )


def test_a_handles_line_of_another_step_is_read_as_an_event(tmp_path: Path) -> None:
    path = tmp_path / "state.jsonl"
    snapshot = {"e": "snapshot", "step": "a", "digest": "d", "state": "SUCCEEDED"}
    snapshot["members"] = [{"member": 0, "run_id": "a-0"}]
    handles = {"e": "handles", "step": "b", "handles": [[0, {"run_id": "b-0"}]]}
    path.write_text(
        "".join(json.dumps(e, separators=(",", ":")) + "\n" for e in (HEADER, snapshot, handles))
    )
    replay = journal.read(path)
    assert replay.steps["a"].members[0].handle is None
    assert replay.steps["b"].members[0].handle == {"run_id": "b-0"}
