"""The fast paths of resuming a pipeline: reports assembled from the journal's own
records (equal to validated ones in every field, type and field set), state file
lines parsed by pydantic-core (as ``json.loads`` parses them), step digests encoded
by the C encoder (as ``json.dumps`` encodes them)."""

from __future__ import annotations

import copy
import json
import random
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError
from pydantic._internal._model_construction import init_private_attributes

from tether import ConfigError, DummyConfig, Job, Pipeline, RunResult, Step, StepState
from tether.pipelines import _resumed, journal, step
from tether.pipelines.journal import Replay
from tether.pipelines.report import MemberReport, StageReport, StepReport

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def assert_same(a: Any, b: Any, where: str = "report") -> None:
    """Equal, and alike all the way down: types, field order, field sets, time zones."""
    assert type(a) is type(b), where
    if isinstance(a, BaseModel):
        assert list(vars(a)) == list(vars(b)), where
        assert a.__pydantic_fields_set__ == b.__pydantic_fields_set__, where
        assert a.__pydantic_private__ == b.__pydantic_private__, where
        assert a.__pydantic_extra__ == b.__pydantic_extra__, where
        for key in vars(a):
            assert_same(getattr(a, key), getattr(b, key), f"{where}.{key}")
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for key in a:
            assert_same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for index, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{index}]")
    else:
        assert a == b, where
        if isinstance(a, datetime):
            assert type(a.tzinfo) is type(b.tzinfo) and a.tzinfo == b.tzinfo, where


def steps_of(runs: Path) -> list[Step]:
    """A root, a fan-out below it with parameters, and a postprocessing step."""
    root = Step("root", Job(name="root", command="true"))
    fan = Step("fan", Job(name="fan", command="true {i}"), over={"i": [1, 2, 3]}, depends_on=[root])
    post = Step("post", processor="noop", depends_on=[fan])
    return [root, fan, post]


async def finished(tmp_path: Path) -> tuple[dict[str, Step], Replay, Path]:
    state = tmp_path / "state.jsonl"
    backend = DummyConfig(runs_dir=tmp_path / "runs", outputs={"out.txt": "x"})
    steps = steps_of(tmp_path / "runs")
    result = await Pipeline(steps, name="p", backend=backend, state=state).run()
    assert result.success
    pipeline = Pipeline(steps_of(tmp_path / "runs"), name="p", backend=backend, state=state)
    return pipeline.steps, journal.read(state), state


async def test_assembled_reports_are_the_validated_ones(tmp_path: Path) -> None:
    steps, replay, _ = await finished(tmp_path)
    names = [name for name in steps if steps[name].job is not None or name == "post"]
    fast = _resumed.assembled(names, steps, replay)
    slow = _resumed.validated(names, steps, replay)
    assert fast == slow
    assert_same(fast, slow)
    assert [r.model_dump() for r in fast] == [r.model_dump() for r in slow]
    assert [r.model_dump_json() for r in fast] == [r.model_dump_json() for r in slow]
    assert [r.model_dump(exclude_unset=True) for r in fast] == [
        r.model_dump(exclude_unset=True) for r in slow
    ]
    assert repr(fast) == repr(slow)
    assert fast[1].runs[2].params == {"i": 3} and fast[1].runs[2].result is not None
    assert fast[1].runs[2].result.outputs, "the dummy's output file is in the report"


async def test_a_resumed_run_reports_what_it_reported_when_it_ran(tmp_path: Path) -> None:
    state = tmp_path / "state.jsonl"
    backend = DummyConfig(runs_dir=tmp_path / "runs")
    first = await Pipeline(steps_of(tmp_path), name="p", backend=backend, state=state).run()
    before = state.read_bytes()
    again = await Pipeline(steps_of(tmp_path), name="p", backend=backend, state=state).run()
    assert state.read_bytes() == before, "resuming a finished pipeline changes nothing"
    assert all(report.resumed for report in again.steps.values())
    for name, report in again.steps.items():
        ran = first.steps[name]
        assert [run.result for run in report.runs] == [run.result for run in ran.runs]
        assert report.postprocess_results == ran.postprocess_results
        assert report.digest == ran.digest


def changed(replay: Replay, edit: Any) -> Replay:
    replay = copy.deepcopy(replay)
    edit(replay)
    return replay


def result_of(replay: Replay, name: str = "fan", index: int = 0) -> dict[str, Any]:
    result = replay.steps[name].members[index].result
    assert result is not None
    return result


UNUSUAL = {
    "an extra key": lambda r: result_of(r).update(extra=1),
    "a missing key": lambda r: result_of(r).pop("error"),
    "exit code true": lambda r: result_of(r).update(exit_code=True),
    "a time as seconds": lambda r: result_of(r).update(started_at=1_700_000_000.5),
    "a path in a list": lambda r: result_of(r).update(outputs=[["x"]]),
    "an empty path": lambda r: result_of(r).update(stdout=""),
    "a stage time as text": lambda r: r.steps["fan"].stages["run"].update(started="2024-01-01"),
    "a bad state": lambda r: result_of(r).update(state="BOGUS"),
    "a run id number": lambda r: result_of(r).update(run_id=5),
}


@pytest.mark.parametrize("edit", list(UNUSUAL), ids=list(UNUSUAL))
async def test_a_record_of_another_shape_is_validated(tmp_path: Path, edit: str) -> None:
    steps, replay, _ = await finished(tmp_path)
    replay = changed(replay, UNUSUAL[edit])
    names = list(steps)
    try:
        slow = _resumed.validated(names, steps, replay)
    except ValidationError as exc:
        with pytest.raises(ValidationError) as fast_error:
            _resumed.reports_done(names, steps, replay)
        assert fast_error.value.errors() == exc.errors()
        return
    fast = list(_resumed.reports_done(names, steps, replay).values())
    assert_same(fast, slow)


@pytest.mark.parametrize(
    "value",
    [
        "/a/b/c",
        "a/b",
        "/c",
        "//x/c",
        "///x/c",
        "/a/b/",
        "/a/./b",
        "/a/b/.",
        "/a/..",
        "a",
        ".",
        "/a//b",
        "/a/b/stdout",
        "./x",
    ],
)
def test_paths_joined_to_their_folder_are_the_parsed_ones(value: str) -> None:
    build = _resumed._Builder(iter(()))
    assert build.path(value) == Path(value)
    assert str(build.path(value)) == str(Path(value))
    assert build.path(value) == Path(value), "and again, from the folder parsed before"


@pytest.mark.parametrize(
    "value",
    [
        {"b": 1, "a": [1.5, None, True, "é\u2603"], "c": {"z": {3, 1}}},
        "a string",
        1.25,
        None,
        [float("inf"), float("nan"), -0.0, 10**30],
        {"k": object()},
        {2: "int keys", 1: "sorted as numbers"},
    ],
)
def test_digest_encoding_is_json_dumps(value: Any) -> None:
    assert step.encode_fields(value) == json.dumps(value, sort_keys=True, default=repr)


def test_digest_encoding_raises_as_json_dumps_does() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(ValueError, match="Circular"):
        step.encode_fields(loop)
    with pytest.raises(TypeError):
        step.encode_fields({"a": 1, 2: 3})  # keys of two types do not sort
    assert step.encode_fields({"a": [1]}) == '{"a": [1]}', "nothing left over from before"


LINES = [
    b'{"a": 1}',
    b' {"a": 1}',
    b'{"a": 1} ',
    b'{"a": 1} x',
    b'{"a": NaN, "b": Infinity, "c": -Infinity, "d": 1e400}',
    b'{"a": 1, "a": 2}',
    b'{"s": "\\udcff"}',
    b'{"s": "\\ud83d\\ude00", "z": "\\u0000"}',
    b'{"a": "\xed\xb3\xbf"}',
    b"\xef\xbb\xbf{}",
    b'{"\xc3\xa9": "\xc3\xa9"}',
    b'{"a": "\xff"}',
    b'{"a": "\t"}',
    b'{"a": 123456789012345678901234567890, "b": -0, "c": -0.0, "d": 5e-324}',
    b"[" * 300 + b"]" * 300,
    b"[1]",
    b"{",
    b"",
]


@pytest.mark.parametrize("line", LINES)
def test_a_line_parses_as_json_loads_parses_it(line: bytes) -> None:
    try:
        expected = json.loads(line)
    except ValueError as exc:
        with pytest.raises(ValueError) as error:
            journal._parse(line)
        assert type(error.value) is type(exc) and str(error.value) == str(exc)
    else:
        assert repr(journal._parse(line)) == repr(expected)


def test_numbers_parse_as_json_loads_parses_them() -> None:
    rng = random.Random(20)
    for _ in range(20_000):
        number = rng.choice(
            [rng.uniform(-1e10, 1e10), rng.random() * 10 ** rng.randint(-300, 300), time.time()]
        )
        line = json.dumps({"x": number, "n": rng.getrandbits(80)}).encode()
        assert repr(journal._parse(line)) == repr(json.loads(line))


def test_a_file_not_all_utf8_is_parsed_line_by_line(tmp_path: Path) -> None:
    path = tmp_path / "state.jsonl"
    header = {"e": "pipeline", "version": journal.VERSION, "name": "p", "time": 1.0}
    path.write_bytes(json.dumps(header).encode() + b"\n" + b'{"e": "x\xff"}\n')
    with pytest.raises(ConfigError, match="corrupt at line 2"):
        journal.read(path)


def test_a_line_with_trailing_junk_is_still_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "state.jsonl"
    header = {"e": "pipeline", "version": journal.VERSION, "name": "p", "time": 1.0}
    step_line = {"e": "step", "step": "a", "digest": "d", "state": "RUNNING"}
    path.write_text(json.dumps(header) + "\n" + json.dumps(step_line) + " {}\n")
    with pytest.raises(ConfigError, match="corrupt at line 2"):
        journal.read(path)


async def test_a_state_file_refused_at_opening_ends_the_pipeline_failed(tmp_path: Path) -> None:
    state = tmp_path / "state.jsonl"
    state.write_text("not a journal\n")
    pipeline = Pipeline([Step("a", Job(command="true"))], backend=DummyConfig(), state=state)
    seen = []
    with pipeline.events() as events:
        with pytest.raises(ConfigError, match="not a tether pipeline state file"):
            await pipeline.run()
        async for event in events:
            seen.append(event)
    assert seen[-1].kind == "pipeline" and seen[-1].state == StepState.FAILED.value


@pytest.mark.parametrize("model", [RunResult, MemberReport, StageReport, StepReport])
def test_the_assembled_models_have_nothing_that_validation_would_run(model: type) -> None:
    """Assembling skips validators and post-init hooks: a model that gains one must
    be assembled with it in mind (or validated)."""
    decorators = model.__pydantic_decorators__
    assert not decorators.field_validators and not decorators.model_validators
    assert not decorators.validators and not decorators.root_validators
    # RunResult's only hook sets its private attributes to their defaults, as assembling does.
    post_init = model.__dict__.get("model_post_init")
    assert model.__pydantic_post_init__ is None or post_init is init_private_attributes
