"""Pipelines through the public API: construction errors, running DAGs on the dummy,
local and inline backends, failures, reports, events, cancellation and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

import tether
from tether import (
    Call,
    ConfigError,
    DummyConfig,
    Ensemble,
    InlineConfig,
    Job,
    LocalConfig,
    Pipeline,
    PipelineEvent,
    PipelineResult,
    RunResult,
    RunState,
    Step,
    StepState,
)
from tether.pipelines import Ref
from tether.pipelines import journal as journal_file

from . import calls_support as cs
from . import pipeline_support as ps

pytestmark = pytest.mark.anyio

ROOT = str(Path(__file__).resolve().parents[1])  # where ``tests`` imports from
JOB = Job(command="true")
QUICK = DummyConfig(duration=0.05)
THREADS = InlineConfig(mode="threads", n_jobs=8)


@pytest.fixture
def anyio_backend() -> str:
    """asyncio by default; tests marked ``trio`` run under both loops (see below)."""
    return "asyncio"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """The ``trio`` marker: the core tests also run under trio (loop-neutral code)."""
    if "anyio_backend" in metafunc.fixturenames and metafunc.definition.get_closest_marker("trio"):
        metafunc.parametrize("anyio_backend", ["asyncio", "trio"])


def count(path: Path) -> int:
    """How many times a counted job or call really ran (one line per run)."""
    return len(path.read_text().splitlines()) if path.exists() else 0


def message(info: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(info.value)
    assert "\n" not in text, f"not one line: {text!r}"
    return text


def backend_config(kind: str, tmp: Path) -> DummyConfig | LocalConfig:
    if kind == "dummy":
        return DummyConfig(duration=0.1, runs_dir=tmp / "runs")
    return LocalConfig(runs_dir=tmp / "runs")


def sleeper(kind: str, seconds: float) -> Job:
    """A job that takes ``seconds`` (the dummy backend takes its config's duration)."""
    return Job(command=f"sleep {seconds}") if kind == "local" else JOB


def run_times(step: tether.StepReport) -> tuple[Any, Any]:
    """Earliest start and latest end of a step's runs."""
    results = [run.result for run in step.runs]
    assert all(result is not None for result in results)
    return (
        min(r.started_at for r in results if r is not None and r.started_at),
        max(r.ended_at for r in results if r is not None and r.ended_at),
    )


async def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    with anyio.fail_after(timeout):
        while not predicate():  # noqa: ASYNC110 (polls files and processes)
            await anyio.sleep(0.02)


# -- construction errors -------------------------------------------------------------------


def test_duplicate_step_names() -> None:
    with pytest.raises(ConfigError) as info:
        Pipeline([Step("a", JOB), Step("b", JOB), Step("a", JOB)], name="dup")
    assert message(info) == "pipeline 'dup' has two steps named 'a'"


def test_unknown_dependency_is_named_with_the_steps() -> None:
    with pytest.raises(ConfigError) as info:
        Pipeline([Step("b", JOB, depends_on=["nope"]), Step("a", JOB)])
    text = message(info)
    assert "step 'b' depends on 'nope'" in text
    assert "(steps: a, b)" in text


def test_unknown_inputs_from_and_refs_are_dependencies_too() -> None:
    with pytest.raises(ConfigError, match="depends on 'gone'"):
        Pipeline([Step("a", JOB, inputs_from=["gone"])])
    with pytest.raises(ConfigError, match="depends on 'ghost'"):
        Pipeline([Step("a", Call(ps.add, Ref("ghost"), 1))])


def test_self_dependency() -> None:
    with pytest.raises(ConfigError) as info:
        Pipeline([Step("a", JOB, depends_on=["a"])])
    assert message(info) == "step 'a' depends on itself"


def test_cycle_is_named() -> None:
    steps = [
        Step("a", JOB, depends_on=["b"]),
        Step("b", JOB, depends_on=["c"]),
        Step("c", JOB, depends_on=["a"]),
        Step("d", JOB),
    ]
    with pytest.raises(ConfigError) as info:
        Pipeline(steps)
    assert "the steps form a cycle: a -> b -> c -> a" in message(info)


def test_cycle_through_refs() -> None:
    a = Step("a", Call(ps.add, Ref("b"), 1))
    b = Step("b", Call(ps.add, a.value, 1))
    with pytest.raises(ConfigError, match="cycle: a -> b -> a"):
        Pipeline([a, b])


@pytest.mark.parametrize("name", ["", "-a", ".a", "a b", "a/b", "x" * 65, "é", 3, None])
def test_bad_step_names(name: Any) -> None:
    with pytest.raises(ConfigError) as info:
        Step(name, JOB)
    assert "must be 1-64 letters, digits" in message(info)


def test_good_step_names() -> None:
    for name in ("a", "A-1", "post.process", "x" * 64, "0_start"):
        assert Step(name, JOB).name == name


def test_step_needs_a_job_or_a_processor() -> None:
    with pytest.raises(ConfigError) as info:
        Step("a")
    assert message(info) == "step 'a' needs a job, or a processor to postprocess with"


def test_postprocess_step_needs_depends_on() -> None:
    with pytest.raises(ConfigError) as info:
        Step("check", processor="noop")
    assert "give it depends_on" in message(info)


def test_over_on_a_postprocess_step() -> None:
    with pytest.raises(ConfigError) as info:
        Step("check", processor="noop", depends_on=["a"], over={"x": [1]})
    assert "'over' fans out a job" in message(info)


def test_over_placeholder_missing_from_params() -> None:
    with pytest.raises(ConfigError) as info:
        Step("s", Job(command="run --x {x} --y {y}"), over=[{"x": 1}])
    text = message(info)
    assert "{y}" in text
    assert "parameters: x" in text


def test_over_needs_a_command_to_fill() -> None:
    with pytest.raises(ConfigError, match="needs a command"):
        Step("s", Job(), over=[{"x": 1}])


@pytest.mark.parametrize(
    "over",
    [[], {}, {"x": []}, {"x": "abc"}, {"x": 3}, [1, 2], "x"],
    ids=[
        "empty-list",
        "empty-mapping",
        "empty-values",
        "string-values",
        "scalar",
        "not-maps",
        "str",
    ],
)
def test_bad_over(over: Any) -> None:
    with pytest.raises(ConfigError) as info:
        Step("s", Job(command="echo {x}"), over=over)
    message(info)


def test_over_mapping_of_lists_is_the_product() -> None:
    step = Step("s", Job(command="run {x} {y}"), over={"x": [1, 2], "y": ["a", "b", "c"]})
    assert [job.command for job in step.members()] == [
        "run 1 a",
        "run 1 b",
        "run 1 c",
        "run 2 a",
        "run 2 b",
        "run 2 c",
    ]
    assert step.params == [{"x": x, "y": y} for x in (1, 2) for y in "abc"]
    assert step.fanned_out


def test_over_fills_every_part_of_an_argv_command() -> None:
    step = Step("s", Job(command=["model", "--case={case}", "{{literal}}"]), over=[{"case": "c1"}])
    assert step.members()[0].command == ["model", "--case=c1", "{literal}"]


@pytest.mark.parametrize("seed", [None, 1.5, True, "7"])
def test_ensemble_needs_an_int_seed(seed: Any) -> None:
    with pytest.raises(ConfigError) as info:
        Step.ensemble("mc", cs.mc_worker, 3, seed)
    assert "needs a fixed int seed" in message(info)


def test_ensemble_refuses_over() -> None:
    with pytest.raises(ConfigError, match="drop 'over'"):
        Step.ensemble("mc", cs.mc_worker, 3, 1, over={"x": [1]})


def test_pipeline_needs_steps() -> None:
    with pytest.raises(ConfigError, match="has no steps"):
        Pipeline([])
    with pytest.raises(ConfigError, match="is not a Step"):
        Pipeline([JOB])  # type: ignore[list-item]


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "2"])
async def test_bad_max_concurrency(bad: Any) -> None:
    pipeline = Pipeline([Step("a", JOB, backend=QUICK)])
    with pytest.raises(ConfigError) as info:
        await pipeline.run(max_concurrency=bad)
    assert message(info) == f"max_concurrency must be an int >= 1, not {bad!r}"


# -- running ---------------------------------------------------------------------------------


@pytest.mark.trio
@pytest.mark.parametrize("kind", ["dummy", "local"])
async def test_linear_chain(kind: str, tmp_path: Path) -> None:
    config = backend_config(kind, tmp_path)
    a = Step("a", sleeper(kind, 0.1))
    b = Step("b", sleeper(kind, 0.1), depends_on=[a])
    c = Step("c", sleeper(kind, 0.1), depends_on=["b"])
    result = await Pipeline([c, b, a], backend=config).run()  # any order given
    assert result.success, result.failed()
    assert list(result.steps) == ["a", "b", "c"]
    for up, down in (("a", "b"), ("b", "c")):
        assert result.steps[down].started_at >= result.steps[up].ended_at
        assert run_times(result.steps[down])[0] >= run_times(result.steps[up])[1]
    for step in result.steps.values():
        assert step.state is StepState.SUCCEEDED
        assert [run.state for run in step.runs] == [RunState.SUCCEEDED]
        assert step.runs[0].run_id.startswith(f"{step.name}-")


@pytest.mark.trio
@pytest.mark.parametrize("kind", ["dummy", "local"])
async def test_diamond(kind: str, tmp_path: Path) -> None:
    config = backend_config(kind, tmp_path)
    a = Step("a", sleeper(kind, 0.1))
    b = Step("b", sleeper(kind, 0.3), depends_on=[a])
    c = Step("c", sleeper(kind, 0.3), depends_on=[a])
    d = Step("d", sleeper(kind, 0.1), depends_on=[b, c])
    result = await Pipeline([a, b, c, d], backend=config).run()
    assert result.success, result.failed()
    steps = result.steps
    for up, down in (("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")):
        assert steps[down].started_at >= steps[up].ended_at
        assert run_times(steps[down])[0] >= run_times(steps[up])[1]
    # b and c wait only for a: they run side by side
    b_start, b_end = run_times(steps["b"])
    c_start, c_end = run_times(steps["c"])
    assert b_start < c_end and c_start < b_end


@pytest.mark.trio
async def test_max_concurrency_over_a_fan_out() -> None:
    key = f"fan-{time.monotonic_ns()}"
    step = Step("t", Call(ps.tracked, key, 0.1), over={"value": list(range(6))}, backend=THREADS)
    result = await Pipeline([step]).run(max_concurrency=2)
    assert result.success
    assert result.value("t") == list(range(6))
    assert ps.peak(key) == 2


async def test_max_concurrency_spans_every_step() -> None:
    key = f"steps-{time.monotonic_ns()}"
    steps = [
        Step(name, Call(ps.tracked, key, 0.1), over={"value": [1, 2, 3, 4]}, backend=THREADS)
        for name in ("left", "right")
    ]
    result = await Pipeline(steps).run(max_concurrency=3)
    assert result.success
    assert ps.peak(key) == 3


async def test_max_concurrency_counts_postprocessors_too() -> None:
    key = f"post-{time.monotonic_ns()}"
    post = Step("post", JOB, over={"i": [1, 2, 3, 4]}, processor=ps.Tracked(key, 0.15))
    calls = Step("calls", Call(ps.tracked, key, 0.3), over={"value": [1, 2]}, backend=THREADS)
    result = await Pipeline([post, calls], backend=DummyConfig()).run(max_concurrency=2)
    assert result.success, result.failed()
    assert ps.peak(key) == 2
    assert len(result["postprocess_results"]["post"]) == 4


async def test_without_max_concurrency_every_member_runs_at_once() -> None:
    key = f"free-{time.monotonic_ns()}"
    step = Step("t", Call(ps.tracked, key, 0.2), over={"value": list(range(6))}, backend=THREADS)
    result = await Pipeline([step]).run()
    assert result.success
    assert ps.peak(key) == 6


async def test_max_concurrency_on_local_commands(tmp_path: Path) -> None:
    log = tmp_path / "times"
    stamp = f"$(date +%s.%N) >> {log}"
    job = Job(command=f"echo start {stamp}; sleep 0.2; echo end {stamp} # {{i}}")
    step = Step("t", job, over={"i": [1, 2, 3]})
    result = await Pipeline([step], backend=LocalConfig()).run(max_concurrency=1)
    assert result.success
    marks = sorted(
        (float(when), word) for word, when in map(str.split, log.read_text().splitlines())
    )
    active = peak = 0
    for _, word in marks:
        active += 1 if word == "start" else -1
        peak = max(peak, active)
    assert len(marks) == 6 and peak == 1


@pytest.mark.trio
async def test_fan_out_fills_command_placeholders(tmp_path: Path) -> None:
    job = Job(command="echo {case}-{n} > out.txt", outputs=["out.txt"])
    step = Step("fan", job, over=[{"case": "a", "n": 1}, {"case": "b", "n": 2}])
    result = await Pipeline([step], backend=LocalConfig()).run()
    assert result.success
    report = result.steps["fan"]
    assert [run.params for run in report.runs] == [{"case": "a", "n": 1}, {"case": "b", "n": 2}]
    assert [path.read_text().strip() for path in report.outputs] == ["a-1", "b-2"]
    assert [run.run_id.split("-")[:2] for run in report.runs] == [["fan", "0"], ["fan", "1"]]


async def test_fan_out_gives_calls_keyword_arguments() -> None:
    step = Step("sq", Call(ps.square), over={"x": [1, 2, 3]}, backend=THREADS)
    result = await Pipeline([step]).run()
    assert result.value("sq") == [1, 4, 9]
    assert [run.params for run in result.steps["sq"].runs] == [{"x": 1}, {"x": 2}, {"x": 3}]


async def test_fan_out_params_in_the_report_are_json_ready(tmp_path: Path) -> None:
    step = Step("sq", Call(ps.counted), over=[{"log": tmp_path / "n", "value": 1}], backend=THREADS)
    result = await Pipeline([step]).run()
    assert result.steps["sq"].runs[0].params == {"log": repr(tmp_path / "n"), "value": 1}
    json.loads(result.model_dump_json())


async def test_ensemble_step_gives_the_ensemble_values() -> None:
    config = InlineConfig(mode="threads", n_jobs=4)
    step = Step.ensemble("mc", cs.mc_worker, 5, seed=20260101, args=(0.5,), backend=config)
    result = await Pipeline([step]).run()
    expected = await Ensemble(cs.mc_worker, 5, 20260101, args=(0.5,)).run(config)
    assert result.value("mc") == expected
    assert len(result.steps["mc"].runs) == 5


async def test_ensemble_seed_as_int_matches_too() -> None:
    step = Step.ensemble("mc", cs.seed_type, 2, seed=3, seed_as="int", backend=THREADS)
    result = await Pipeline([step]).run()
    assert result.value("mc") == ["int", "int"]


@pytest.mark.trio
async def test_value_refs_carry_fan_out_values() -> None:
    sq = Step("sq", Call(ps.square), over={"x": [1, 2, 3]})
    total = Step("sum", Call(ps.total, sq.value))
    one = Step("one", Call(ps.square, 4))
    plus = Step("plus", Call(ps.add, one.value, b=1))
    result = await Pipeline([sq, total, one, plus], backend=THREADS).run()
    assert result.success
    assert result.value("sum") == 14
    assert result.value("plus") == 17
    assert result.value("sq") == [1, 4, 9]


async def test_output_refs_give_paths(tmp_path: Path) -> None:
    make = Step(
        "make", Job(command="echo {x} > out{x}.txt", outputs=["out*.txt"]), over={"x": [1, 2]}
    )
    single = Step("single", Job(command="echo solo > solo.txt", outputs=["solo.txt"]))
    read = Step("read", Call(ps.read_texts, make.outputs), backend=THREADS)
    solo = Step("solo", Call(ps.read_texts, single.outputs), backend=THREADS)
    result = await Pipeline([make, single, read, solo], backend=LocalConfig()).run()
    assert result.success, result.failed()
    assert result.value("read") == ["1", "2"]
    assert result.value("solo") == ["solo"]


async def test_result_refs_give_run_results() -> None:
    fan = Step("fan", Call(ps.square), over={"x": [2, 3]})
    one = Step("one", Call(ps.square, 5))
    of_fan = Step("of_fan", Call(ps.describe, fan.result))
    of_one = Step("of_one", Call(ps.describe, one.result))
    result = await Pipeline([fan, one, of_fan, of_one], backend=THREADS).run()
    assert result.success
    fan_ids = [run.run_id for run in result.steps["fan"].runs]
    assert result.value("of_fan") == [["RunResult", i, "SUCCEEDED"] for i in fan_ids]
    one_id = result.steps["one"].runs[0].run_id
    assert result.value("of_one") == ["RunResult", one_id, "SUCCEEDED"]


async def test_refs_inside_containers_are_filled() -> None:
    one = Step("one", Call(ps.square, 3))
    echo = Step("echo", Call(cs.echo, [one.value], {"k": (one.value, 1)}, key={"v": one.value}))
    result = await Pipeline([one, echo], backend=THREADS).run()
    assert result.value("echo") == (([9], {"k": (9, 1)}), {"key": {"v": 9}})


@pytest.mark.trio
async def test_inputs_from_stages_upstream_outputs(tmp_path: Path) -> None:
    first = Step("first", Job(command="echo hello > greeting.txt", outputs=["greeting.txt"]))
    second = Step(
        "second",
        Job(command="cat greeting.txt > copy.txt", outputs=["copy.txt"]),
        inputs_from=[first],
    )
    result = await Pipeline([second, first], backend=LocalConfig()).run()
    assert result.success, result.failed()
    [copy] = result.steps["second"].outputs
    assert copy.read_text() == "hello\n"
    run_dir = result.steps["second"].runs[0].result.run_dir  # type: ignore[union-attr]
    assert run_dir is not None and (run_dir / "greeting.txt").read_text() == "hello\n"
    assert result.steps["second"].started_at >= result.steps["first"].ended_at


async def test_inputs_from_colliding_fan_out_fails_generate() -> None:
    make = Step("make", Job(command="echo {x} > out.txt", outputs=["out.txt"]), over={"x": [1, 2]})
    use = Step("use", Job(command="cat out.txt"), inputs_from=[make])
    result = await Pipeline([make, use], backend=LocalConfig()).run()
    report = result.steps["use"]
    assert report.state is StepState.FAILED
    assert report.reason is not None
    assert report.reason.startswith("generate: step 'use': inputs from make collide on the name")
    assert "'out.txt'" in report.reason
    assert report.stages["generate"].state == "FAILED"
    assert "collide" in (report.stages["generate"].message or "")
    assert "run" not in report.stages
    assert report.runs == []


# -- failures -----------------------------------------------------------------------------------


@pytest.mark.trio
async def test_fail_fast_cancels_running_steps_and_skips_the_rest(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    slow = Step("slow", Job(command=f"echo $$ >> {pids}; exec sleep 30"))
    bad = Step("bad", Job(command=f"while [ ! -s {pids} ]; do sleep 0.02; done; exit 3"))
    after_slow = Step("after_slow", JOB, depends_on=[slow])
    after_bad = Step("after_bad", JOB, depends_on=[bad])
    pipeline = Pipeline([slow, bad, after_slow, after_bad], backend=LocalConfig(cancel_grace=2))
    started = time.monotonic()
    result = await pipeline.run()
    assert time.monotonic() - started < 10
    steps = result.steps
    assert not result.success
    assert steps["bad"].state is StepState.FAILED
    bad_id = steps["bad"].runs[0].run_id
    assert (
        steps["bad"].reason == f"1 of 1 runs did not succeed; run 0 ({bad_id}) FAILED: exit code 3"
    )
    assert steps["slow"].state is StepState.CANCELLED
    assert steps["slow"].reason == "fail-fast: step 'bad' failed"
    assert steps["slow"].runs[0].state is RunState.CANCELLED
    assert steps["slow"].stages["run"].state == "CANCELLED"
    assert steps["after_slow"].state is StepState.SKIPPED
    assert steps["after_slow"].reason == "fail-fast: step 'bad' failed"
    assert steps["after_bad"].state is StepState.SKIPPED
    assert "'bad'" in (steps["after_bad"].reason or "")
    pid = int(pids.read_text().split()[0])
    await wait_for(lambda: not Path(f"/proc/{pid}").exists(), timeout=5)


async def test_keep_going_runs_independent_branches() -> None:
    failing = DummyConfig(outcome="failed", exit_code=4)
    a = Step("a", JOB, backend=failing)
    b = Step("b", JOB, depends_on=[a])
    c = Step("c", JOB, depends_on=[b])
    d = Step("d", JOB)
    e = Step("e", JOB, depends_on=[d])
    result = await Pipeline([a, b, c, d, e], backend=QUICK).run(fail_fast=False)
    steps = result.steps
    assert not result.success and not result["run_success"]
    assert steps["a"].state is StepState.FAILED
    assert steps["a"].reason is not None and "1 of 1 runs did not succeed" in steps["a"].reason
    assert steps["a"].stages["run"].state == "FAILED"
    assert steps["b"].state is StepState.SKIPPED
    assert steps["b"].reason == "upstream step 'a' FAILED"
    assert steps["c"].state is StepState.SKIPPED
    assert steps["c"].reason == "upstream step 'b' SKIPPED"
    assert steps["d"].state is StepState.SUCCEEDED
    assert steps["e"].state is StepState.SUCCEEDED
    assert result.failed() == ["a", "b", "c"]
    assert steps["b"].runs == [] and steps["b"].started_at is None


async def test_a_failed_member_fails_its_step_and_names_the_run() -> None:
    step = Step("m", Call(cs.fail_if, bad=2), over={"x": [1, 2, 3]}, backend=THREADS)
    # keep going: fail-fast would cancel a sibling still running when run 1 fails,
    # and on a busy machine one may be.
    result = await Pipeline([step]).run(fail_fast=False)
    report = result.steps["m"]
    assert report.state is StepState.FAILED
    bad_id = report.runs[1].run_id
    assert (
        report.reason
        == f"1 of 3 runs did not succeed; run 1 ({bad_id}) FAILED: {report.runs[1].result.error}"
    )  # type: ignore[union-attr]
    assert "bad item 2" in (report.reason or "")
    assert [run.state for run in report.runs] == [
        RunState.SUCCEEDED,
        RunState.FAILED,
        RunState.SUCCEEDED,
    ]


async def test_submit_error_fails_the_step() -> None:
    step = Step("c", Call(ps.square, 2), backend=DummyConfig())
    result = await Pipeline([step]).run()
    report = result.steps["c"]
    assert report.state is StepState.FAILED
    assert "The dummy backend runs command jobs, not Call 'square'" in (report.reason or "")
    assert report.runs[0].state is RunState.FAILED
    assert report.runs[0].result is not None
    assert "runs command jobs" in (report.runs[0].result.error or "")
    assert report.stages["run"].state == "FAILED"


@pytest.mark.parametrize(
    ("processor", "text"),
    [
        (
            ps.Verdict(success=False),
            "postprocessor 'Verdict' failed for 1 of 1 runs: the output is wrong",
        ),
        (ps.Explodes(), "postprocessor 'Explodes' raised RuntimeError: no such variable 'Hs'"),
    ],
    ids=["success-false", "raises"],
)
async def test_postprocessor_failure_fails_the_step(processor: Any, text: str) -> None:
    step = Step("a", JOB, processor=processor)
    result = await Pipeline([step], backend=QUICK).run()
    report = result.steps["a"]
    assert report.state is StepState.FAILED
    assert text in (report.reason or "")
    assert report.stages["run"].state == "SUCCEEDED"
    assert report.stages["postprocess"].state == "FAILED"
    assert text in (report.stages["postprocess"].message or "")
    assert not result["success"]
    assert result["run_success"]  # the model ran; only its postprocessing failed
    [entry] = result["postprocess_results"]["a"]
    assert entry["success"] is False
    assert entry["run_id"] == report.runs[0].run_id


def test_unknown_processor_name_is_refused_before_anything_runs() -> None:
    with pytest.raises(ConfigError, match="step 'a': Unknown postprocessor 'no-such'; known"):
        Pipeline([Step("a", JOB, processor="no-such")], backend=QUICK)


async def test_postprocess_step_processes_upstream_runs(tmp_path: Path) -> None:
    log = tmp_path / "post.log"
    a = Step("a", JOB, over={"i": [1, 2]})
    b = Step("b", JOB)
    check = Step(
        "check", processor=ps.Verdict(log=log), process_kwargs={"tag": "v1"}, depends_on=[a, b]
    )
    result = await Pipeline([a, b, check], backend=QUICK).run()
    assert result.success
    run_ids = [run.run_id for name in ("a", "b") for run in result.steps[name].runs]
    assert sorted(log.read_text().split()) == sorted(run_ids)
    reports = result["postprocess_results"]["check"]
    assert [r["run_id"] for r in reports] == run_ids
    assert all(r["message"] == "fine v1" and r["processor"] == "Verdict" for r in reports)
    assert result.steps["check"].runs == []
    assert set(result.steps["check"].stages) == {"generate", "postprocess"}
    assert result.value("check") is None


# -- results -----------------------------------------------------------------------------------


@pytest.mark.trio
async def test_result_shape(tmp_path: Path) -> None:
    state = tmp_path / "state.jsonl"
    a = Step("a", Job(command="echo hi"), processor="noop")
    b = Step("b", Call(ps.square, 7), backend=THREADS, depends_on=[a])
    pipeline = Pipeline([a, b], name="shape", backend=QUICK, state=state)
    result = await pipeline.run()
    assert isinstance(result, PipelineResult)
    assert result["success"] is True and result.success
    assert result["run_success"] is True
    assert result["steps"] is result.steps
    run_a = result.steps["a"].runs[0]
    assert result["postprocess_results"] == {
        "a": [
            {
                "success": True,
                "message": "No postprocessing requested",
                "processor": "noop",
                "run_id": run_a.run_id,
            }
        ]
    }
    with pytest.raises(KeyError):
        result["nope"]
    assert result.name == "shape" and result.state_file == state
    assert result.started_at is not None and result.ended_at is not None
    assert result.started_at <= result.ended_at
    assert result.failed() == []
    report = result.steps["a"]
    assert report.name == "a" and report.digest and not report.resumed and report.reason is None
    assert list(report.stages) == ["generate", "run", "postprocess"]
    for stage in report.stages.values():
        assert stage.state == "SUCCEEDED" and stage.message is None
        assert stage.started_at is not None and stage.ended_at is not None
        assert stage.started_at <= stage.ended_at
    assert report.started_at <= report.stages["generate"].started_at  # type: ignore[operator]
    assert report.stages["postprocess"].ended_at <= report.ended_at  # type: ignore[operator]
    assert run_a.index == 0 and run_a.origin == "submitted" and run_a.params is None
    assert run_a.state is RunState.SUCCEEDED
    assert isinstance(run_a.result, RunResult) and run_a.result.run_id == run_a.run_id
    assert report.run_success
    assert result.value("a") is None  # a command step has no value
    assert result.value("b") == 49
    with pytest.raises(KeyError, match="no step 'c'"):
        result.value("c")
    copy = PipelineResult.model_validate_json(result.model_dump_json())
    assert copy.steps["a"].runs[0].result == run_a.result.model_copy(update={"value": None})


def test_run_sync() -> None:
    result = Pipeline([Step("a", JOB)], backend=QUICK).run_sync(max_concurrency=1)
    assert result.success


# -- events ----------------------------------------------------------------------------------


async def collect(pipeline: Pipeline, **options: Any) -> tuple[list[PipelineEvent], Any]:
    """Every event of one run (the iterator must end by itself), and the run's result."""
    seen: list[PipelineEvent] = []
    outcome: dict[str, Any] = {}
    with pipeline.events() as events:

        async def run() -> None:
            outcome["result"] = await pipeline.run(**options)

        with anyio.fail_after(20):
            async with anyio.create_task_group() as group:
                group.start_soon(run)
                async for event in events:
                    seen.append(event)
    return seen, outcome["result"]


def where(events: list[PipelineEvent], **fields: Any) -> list[int]:
    return [
        i
        for i, event in enumerate(events)
        if all(getattr(event, key) == value for key, value in fields.items())
    ]


@pytest.mark.trio
async def test_event_sequence(tmp_path: Path) -> None:
    a = Step("a", JOB, processor="noop")
    b = Step("b", JOB, depends_on=[a], over={"i": [1, 2]})
    events, result = await collect(Pipeline([a, b], backend=QUICK))
    assert result.success
    assert (events[0].kind, events[0].state) == ("pipeline", "RUNNING")
    assert (events[-1].kind, events[-1].state) == ("pipeline", "SUCCEEDED")
    assert where(events, kind="pipeline") == [0, len(events) - 1]
    for name, members in (("a", 1), ("b", 2)):
        [start] = where(events, kind="step", step=name, state="RUNNING")
        [end] = where(events, kind="step", step=name, state="SUCCEEDED")
        runs = where(events, kind="run", step=name)
        assert {events[i].member for i in runs} == set(range(members))
        assert where(events, kind="run", step=name, state="SUCCEEDED")
        assert all(start < i < end for i in runs)
        stages = where(events, kind="stage", step=name)
        assert all(start < i < end for i in stages)
    gen = where(events, kind="stage", step="a", stage="generate")
    run = where(events, kind="stage", step="a", stage="run")
    post = where(events, kind="stage", step="a", stage="postprocess")
    assert gen[-1] < run[0] and run[-1] < post[0]
    [processed] = where(events, kind="postprocess", step="a")
    assert post[0] < processed < post[-1]
    assert (
        where(events, kind="step", step="a", state="SUCCEEDED")[0]
        < where(events, kind="step", step="b", state="RUNNING")[0]
    )
    run_ids = {events[i].run_id for i in where(events, kind="run", step="b")}
    assert run_ids == {run.run_id for run in result.steps["b"].runs}
    assert all(event.time.tzinfo is not None for event in events)
    assert str(events[0]) == "pipeline: RUNNING (pipeline)"


async def test_events_of_a_failing_pipeline_end_with_failed() -> None:
    a = Step("a", JOB, backend=DummyConfig(outcome="failed"))
    pipeline = Pipeline([a, Step("b", JOB, depends_on=[a])], backend=QUICK)
    events, result = await collect(pipeline, fail_fast=False)
    assert not result.success
    assert (events[-1].kind, events[-1].state) == ("pipeline", "FAILED")
    [skipped] = where(events, kind="step", step="b", state="SKIPPED")
    assert events[skipped].message == "upstream step 'a' FAILED"
    assert str(events[skipped]) == "b: SKIPPED (upstream step 'a' FAILED)"


async def test_events_end_when_run_is_refused() -> None:
    pipeline = Pipeline([Step("a", JOB)], backend=QUICK)
    with pipeline.events() as events:
        with pytest.raises(ConfigError):
            await pipeline.run(max_concurrency=0)
        with anyio.fail_after(2):
            assert [event async for event in events] == []


async def test_subscription_is_for_one_run() -> None:
    pipeline = Pipeline([Step("a", JOB)], backend=QUICK)
    first, _ = await collect(pipeline)
    with pipeline.events() as late:
        await pipeline.run()
        await pipeline.run()  # a third run: the subscription ended with the second
        with anyio.fail_after(2):
            again = [event async for event in late]
    assert [(e.kind, e.step, e.state) for e in again] == [(e.kind, e.step, e.state) for e in first]


async def events_of_a_cancelled_run(pipeline: Pipeline, after: float) -> list[PipelineEvent]:
    """Every event of a run cancelled ``after`` seconds in (the iterator must end)."""
    seen: list[PipelineEvent] = []
    with pipeline.events() as events, anyio.fail_after(10):
        async with anyio.create_task_group() as group:

            async def consume() -> None:
                async for event in events:
                    seen.append(event)

            group.start_soon(consume)
            with anyio.move_on_after(after):
                await pipeline.run()
    return seen


async def test_events_end_when_the_run_is_cancelled() -> None:
    pipeline = Pipeline([Step("a", JOB)], backend=DummyConfig(duration=30))
    seen = await events_of_a_cancelled_run(pipeline, 0.3)
    assert (seen[-1].kind, seen[-1].state) == ("pipeline", "FAILED")
    [cancelled] = where(seen, kind="step", step="a", state="CANCELLED")
    assert seen[cancelled].message == "the pipeline was cancelled"
    assert where(seen, kind="run", step="a", state="CANCELLED")


# -- cancellation ---------------------------------------------------------------------------


@pytest.mark.trio
async def test_cancelling_the_caller_cancels_local_runs_then_resume_completes(
    tmp_path: Path,
) -> None:
    pids, go = tmp_path / "pids", tmp_path / "go"
    job = Job(command=f"echo $$ >> {pids}; test -f {go} && exit 0; exec sleep 30")
    a, b = Step("a", job), Step("b", job.model_copy(update={"name": "other"}))
    c = Step("c", Job(command="true"), depends_on=[a])
    state = tmp_path / "state.jsonl"
    pipeline = Pipeline([a, b, c], backend=LocalConfig(cancel_grace=2), state=state)
    seen: dict[str, bool] = {}

    async def run() -> None:
        try:
            await pipeline.run()
        except anyio.get_cancelled_exc_class():
            seen["cancelled"] = True
            raise
        seen["returned"] = True

    async with anyio.create_task_group() as group:
        group.start_soon(run)
        await wait_for(lambda: count(pids) == 2)
        group.cancel_scope.cancel()
    assert seen == {"cancelled": True}
    for pid in map(int, pids.read_text().split()):
        await wait_for(lambda pid=pid: not Path(f"/proc/{pid}").exists(), timeout=5)
    replay = journal_file.read(state)
    for name in ("a", "b"):
        record = replay.steps[name]
        assert record.state == "CANCELLED"
        assert record.reason == "the pipeline was cancelled"
        assert record.members[0].result is not None
        assert record.members[0].result["state"] == "CANCELLED"
    assert replay.steps["c"].state == "SKIPPED"

    go.touch()
    result = await pipeline.run()
    assert result.success, result.failed()
    for name in ("a", "b"):
        assert result.steps[name].runs[0].origin == "submitted"
        assert not result.steps[name].resumed
    assert count(pids) == 4


# -- resume ---------------------------------------------------------------------------------


@pytest.mark.trio
async def test_second_run_after_success_skips_everything(tmp_path: Path) -> None:
    state = tmp_path / "state.jsonl"

    def build() -> Pipeline:
        a = Step("a", Job(command=f"echo ran >> {tmp_path / 'a.count'}", outputs=[]))
        fan = Step(
            "fan",
            Call(ps.counted, str(tmp_path / "fan.count")),
            over={"value": [1, 2]},
            backend=LocalConfig(),
            depends_on=[a],
        )
        post = Step("post", processor=ps.Verdict(log=tmp_path / "post.log"), depends_on=[a])
        return Pipeline([a, fan, post], backend=LocalConfig(), state=state)

    first = await build().run()
    assert first.success
    events, second = await collect(build())
    assert second.success
    for name, step in second.steps.items():
        assert step.resumed, name
        assert step.reason == "finished in an earlier run"
        assert all(run.origin == "recorded" for run in step.runs)
        assert [run.model_dump(mode="json", exclude={"origin"}) for run in step.runs] == [
            run.model_dump(mode="json", exclude={"origin"}) for run in first.steps[name].runs
        ]
        assert step.stages.keys() == first.steps[name].stages.keys()
    assert (count(tmp_path / "a.count"), count(tmp_path / "fan.count")) == (1, 2)
    assert count(tmp_path / "post.log") == 1
    assert second.value("fan") == [1, 2]  # reloaded from the run folders
    assert second["postprocess_results"] == first["postprocess_results"]
    assert [e.kind for e in events] == ["pipeline", "step", "step", "step", "pipeline"]
    assert {e.message for e in events if e.kind == "step"} == {"finished in an earlier run"}


CHANGES = ["command", "call-argument", "backend-settings", "processor-kwargs"]


def changeable(kind: str, tmp: Path, version: str) -> Step:
    """Step 'b' (after 'a'), in one of two versions that differ only by ``kind``."""
    log = tmp / "b.count"
    counted = Job(command=f"echo ran >> {log}")
    if kind == "command":
        return Step("b", Job(command=f"echo ran >> {log}; echo {version}"), depends_on=["a"])
    if kind == "call-argument":
        return Step("b", Call(ps.counted, str(log), version), backend=THREADS, depends_on=["a"])
    if kind == "backend-settings":
        config = LocalConfig(env_vars={"VERSION": version})
        return Step("b", counted, backend=config, depends_on=["a"])
    return Step(
        "b", counted, processor=ps.Verdict(), process_kwargs={"tag": version}, depends_on=["a"]
    )


@pytest.mark.parametrize("kind", CHANGES)
async def test_a_changed_step_reruns_with_its_dependants_only(kind: str, tmp_path: Path) -> None:
    state = tmp_path / "state.jsonl"

    def build(version: str) -> Pipeline:
        a = Step("a", Job(command=f"echo ran >> {tmp_path / 'a.count'}"))
        b = changeable(kind, tmp_path, version)
        c = Step("c", Job(command=f"echo ran >> {tmp_path / 'c.count'}"), depends_on=["b"])
        d = Step("d", Job(command=f"echo ran >> {tmp_path / 'd.count'}"))
        return Pipeline([a, b, c, d], backend=LocalConfig(), state=state)

    assert (await build("1").run()).success
    again = await build("1").run()
    assert all(step.resumed for step in again.steps.values())
    changed = await build("2").run()
    assert changed.success, changed.failed()
    counts = {name: count(tmp_path / f"{name}.count") for name in "abcd"}
    assert counts == {"a": 1, "b": 2, "c": 2, "d": 1}
    assert {name for name, step in changed.steps.items() if step.resumed} == {"a", "d"}
    assert changed.steps["b"].digest != again.steps["b"].digest
    if kind == "processor-kwargs":
        assert changed["postprocess_results"]["b"][0]["message"] == "fine 2"


async def test_a_failed_step_reruns_and_its_siblings_are_kept(tmp_path: Path) -> None:
    state, go = tmp_path / "state.jsonl", tmp_path / "go"

    def build() -> Pipeline:
        def counted(name: str, then: str = "true") -> Job:
            return Job(command=f"echo ran >> {tmp_path / name}.count; {then}")

        over = {"i": [1, 2, 3]}

        return Pipeline(
            [
                Step("ok", counted("ok")),
                Step("flaky", counted("flaky", f"test -f {go}")),
                Step("after", counted("after"), depends_on=["flaky"]),
                Step("fan", counted("fan{i}", f"test {{i}} != 2 || test -f {go}"), over=over),
            ],
            backend=LocalConfig(),
            state=state,
        )

    first = await build().run(fail_fast=False)
    assert first.failed() == ["flaky", "after", "fan"]
    go.touch()
    second = await build().run(fail_fast=False)
    assert second.success, second.failed()
    steps = second.steps
    assert steps["ok"].resumed and not steps["flaky"].resumed and not steps["after"].resumed
    assert [run.origin for run in steps["fan"].runs] == ["recorded", "submitted", "recorded"]
    assert steps["fan"].runs[0].run_id == first.steps["fan"].runs[0].run_id
    assert steps["fan"].runs[1].run_id != first.steps["fan"].runs[1].run_id
    counts = {name: count(tmp_path / f"{name}.count") for name in ("ok", "flaky", "after")}
    assert counts == {"ok": 1, "flaky": 2, "after": 1}
    assert [count(tmp_path / f"fan{i}.count") for i in (1, 2, 3)] == [1, 2, 1]


async def test_a_crashed_pipeline_reattaches_to_its_run(tmp_path: Path) -> None:
    state, errors = tmp_path / "state.jsonl", tmp_path / "stderr"
    argv = [sys.executable, "-c", "from tests.pipeline_support import main; main()"]
    with errors.open("wb") as stderr:
        process = await anyio.open_process(
            [*argv, "crash", str(tmp_path)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr
        )

    def handle_recorded() -> bool:
        assert process.returncode is None, f"the pipeline ended early: {errors.read_text()}"
        replay = journal_file.read(state)
        member = replay.steps["long"].members.get(0) if "long" in replay.steps else None
        return member is not None and member.handle is not None

    try:
        await wait_for(handle_recorded, timeout=20)
    finally:
        process.send_signal(signal.SIGKILL)  # a crash: nothing gets to clean up
        await process.wait()
        await process.aclose()
    assert count(tmp_path / "long.count") == 1 and count(tmp_path / "after.count") == 0

    result = await ps.crash_pipeline(tmp_path).run()
    assert result.success, result.failed()
    long = result.steps["long"]
    assert long.runs[0].origin == "reattached"
    assert not long.resumed
    assert long.runs[0].run_id == journal_file.read(state).steps["long"].members[0].run_id
    assert count(tmp_path / "long.count") == 1  # re-attached, not run twice
    assert count(tmp_path / "after.count") == 1


async def test_call_values_on_the_local_backend_survive_resume(tmp_path: Path) -> None:
    state, log = tmp_path / "state.jsonl", tmp_path / "first.count"

    def build(increment: int) -> Pipeline:
        first = Step("first", Call(ps.counted, str(log), 5), backend=LocalConfig())
        second = Step("second", Call(ps.add, first.value, increment), backend=THREADS)
        return Pipeline([first, second], state=state)

    assert (await build(1).run()).value("second") == 6
    result = await build(2).run()
    assert result.value("second") == 7
    assert result.steps["first"].resumed
    assert result.value("first") == 5
    assert count(log) == 1


def in_fresh_process(what: str, tmp: Path, **env: str) -> dict[str, Any]:
    """Run one of pipeline_support's pipelines in a new interpreter; its JSON summary."""
    proc = subprocess.run(
        [sys.executable, "-c", "from tests.pipeline_support import main; main()", what, str(tmp)],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout.splitlines()[-1]))


async def test_inline_values_do_not_outlive_their_process(tmp_path: Path) -> None:
    assert in_fresh_process("inline-values", tmp_path)["success"]
    assert count(tmp_path / "first.count") == 1

    result = await ps.inline_values_pipeline(tmp_path, 2).run()
    assert result.success, result.failed()
    assert result.value("second") == 7
    assert not result.steps["first"].resumed  # its value was gone with its process
    assert result.steps["first"].runs[0].origin == "submitted"
    assert count(tmp_path / "first.count") == 2


async def test_state_given_to_run_overrides_the_pipelines(tmp_path: Path) -> None:
    log = tmp_path / "a.count"
    pipeline = Pipeline([Step("a", Job(command=f"echo ran >> {log}"))], backend=LocalConfig())
    await pipeline.run(state=tmp_path / "one.jsonl")
    await pipeline.run(state=tmp_path / "one.jsonl")
    assert count(log) == 1
    await pipeline.run(state=tmp_path / "two.jsonl")
    await pipeline.run()  # no state file: everything runs
    assert count(log) == 3


# -- the convenience function and caching ------------------------------------------------------


async def test_pipeline_function_answers_like_rompy() -> None:
    result = await tether.pipeline(
        Job(name="model run", command="echo hi"), run_backend=LocalConfig(), processor="noop"
    )
    assert result["success"] and result["run_success"]
    assert list(result["postprocess_results"]) == ["model-run"]
    [entry] = result["postprocess_results"]["model-run"]
    assert entry["success"] is True and entry["message"] == "No postprocessing requested"
    assert result["stage"] == "postprocess"
    assert result["stages_completed"] == ["generate", "run", "postprocess"]
    assert result["message"] == "Pipeline 'model-run' completed successfully"


async def test_pipeline_function_names_the_stage_that_failed_like_rompy() -> None:
    result = await tether.pipeline(Job(name="m", command="exit 3"), run_backend=LocalConfig())
    assert not result["success"]
    assert (result["stage"], result["stages_completed"]) == ("run", ["generate"])
    assert result["message"].startswith("Pipeline 'm': step 'm' failed at its run stage: ")
    assert "exit code 3" in result["message"]
    failed = await tether.pipeline(JOB, run_backend=QUICK, processor=ps.Verdict(success=False))
    assert failed["stage"] == "postprocess"
    assert failed["stages_completed"] == ["generate", "run"]


async def test_stages_of_a_pipeline_of_several_steps_name_their_step() -> None:
    first, second = Step("a", JOB, backend=QUICK), Step("b", JOB, backend=QUICK, depends_on="a")
    result = await Pipeline([first, second]).run()
    assert result["stages_completed"][:2] == ["a:generate", "a:run"]
    assert result["stage"] == result["stages_completed"][-1]
    assert result["stage"].startswith("b:")


async def test_pipeline_function_with_a_backend_type_name() -> None:
    result = await tether.pipeline(
        Job(name="sim", command="true"),
        run_backend="dummy",
        run_kwargs={"duration": 0.05, "outputs": {"r.txt": "42\n"}},
    )
    assert result["success"]
    [path] = result.steps["sim"].outputs
    assert path.read_text() == "42\n"


async def test_pipeline_function_failed_postprocessing() -> None:
    result = await tether.pipeline(JOB, run_backend=QUICK, processor=ps.Verdict(success=False))
    assert not result["success"] and result["run_success"]
    assert result["postprocess_results"]["job"][0]["success"] is False


async def test_pipeline_function_run_kwargs_need_a_type_name() -> None:
    with pytest.raises(ConfigError) as info:
        await tether.pipeline(JOB, run_backend=DummyConfig(), run_kwargs={"duration": 1})
    assert message(info) == "pipeline(): run_kwargs needs run_backend to be a backend type name"
    with pytest.raises(ConfigError) as info:
        await tether.pipeline(JOB, run_kwargs={"duration": 1})
    with pytest.raises(ConfigError, match="run_kwargs for backend 'dummy'"):
        await tether.pipeline(JOB, run_backend="dummy", run_kwargs={"no_such_field": 1})


async def test_cached_step_hits_in_a_fresh_pipeline(tmp_path: Path) -> None:
    log = tmp_path / "ran.count"
    store = {"store_path": tmp_path / "c.sqlite"}

    def build(state: str) -> Pipeline:
        job = Job(command=f"echo ran >> {log}; echo 42 > out.txt", outputs=["out.txt"])
        return Pipeline(
            [Step("a", job, cache=store)], backend=LocalConfig(), state=tmp_path / state
        )

    first = await build("one.jsonl").run()
    second = await build("two.jsonl").run()
    assert first.success and second.success
    assert count(log) == 1
    assert not second.steps["a"].resumed
    assert second.steps["a"].runs[0].origin == "submitted"
    [out] = second.steps["a"].outputs
    assert out.read_text() == "42\n"
    assert second.steps["a"].runs[0].run_id != first.steps["a"].runs[0].run_id


async def test_bad_cache_options_are_a_config_error() -> None:
    pipeline = Pipeline([Step("a", JOB, cache={"no_such_option": 1})], backend=QUICK)
    with pytest.raises(ConfigError, match="step 'a': invalid cache options"):
        await pipeline.run()


# -- known bugs ---------------------------------------------------------------------------------


async def test_resumed_runs_keep_their_run_ids_on_backends_without_find(tmp_path: Path) -> None:
    pipeline = Pipeline([Step("sq", Call(ps.square, 3), backend=THREADS)], state=tmp_path / "s")
    first = await pipeline.run()
    second = await pipeline.run()
    assert second.steps["sq"].resumed
    run = second.steps["sq"].runs[0]
    assert run.result is not None
    assert run.run_id == run.result.run_id == first.steps["sq"].runs[0].run_id


async def test_a_set_argument_resumes_in_another_process(tmp_path: Path) -> None:
    assert in_fresh_process("set-argument", tmp_path, PYTHONHASHSEED="1")["success"]
    second = in_fresh_process("set-argument", tmp_path, PYTHONHASHSEED="2")
    assert second["resumed"] == {"s": True}
    assert count(tmp_path / "set.count") == 1


async def test_subscribing_during_a_run_sees_the_rest_of_it() -> None:
    pipeline = Pipeline([Step("a", JOB)], backend=DummyConfig(duration=0.6))
    async with anyio.create_task_group() as group:
        group.start_soon(pipeline.run)
        await anyio.sleep(0.2)
        with pipeline.events() as events:
            with anyio.move_on_after(1):
                seen = [event async for event in events]
    assert seen and (seen[-1].kind, seen[-1].state) == ("pipeline", "SUCCEEDED")


async def test_a_backend_may_be_a_type_name_but_nothing_else(tmp_path: Path) -> None:
    step = Step("a", JOB, backend="dummy")
    assert isinstance(step.backend, DummyConfig)
    with pytest.raises(ConfigError, match="step 'b': backend 'nope': Unknown backend type 'nope'"):
        Step("b", JOB, backend="nope")
    with pytest.raises(
        tether.ArgumentTypeError, match="backend must be a Backend, a backend config"
    ):
        Step("c", JOB, backend=42)  # type: ignore[arg-type]


def test_depends_on_one_name_as_a_string() -> None:
    prep = Step("prep", JOB)
    try:
        pipeline = Pipeline([prep, Step("c", JOB, depends_on="prep")])
    except ConfigError as exc:
        assert "'p'," not in str(exc)
    else:
        assert pipeline.steps["c"].upstream() == ("prep",)


async def test_a_cancelled_stage_is_journaled_and_announced(tmp_path: Path) -> None:
    state = tmp_path / "state.jsonl"
    pipeline = Pipeline([Step("a", JOB)], backend=DummyConfig(duration=30), state=state)
    seen = await events_of_a_cancelled_run(pipeline, 0.3)
    assert journal_file.read(state).steps["a"].state == "CANCELLED"
    assert where(seen, kind="stage", step="a", stage="run", state="CANCELLED")
    assert journal_file.read(state).steps["a"].stages["run"]["state"] == "CANCELLED"
