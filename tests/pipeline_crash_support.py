"""The 20-step pipeline that ``test_pipeline_crash.py`` kills and resumes.

Run as a script, ``python tests/pipeline_crash_support.py STATE_FILE WORK_DIR`` runs
the pipeline on the local backend (run folders in ``WORK_DIR/runs``) with its state
in ``STATE_FILE``; it exits 0 when every step succeeded, 1 otherwise. It prints each
run event it sees (``run <step>[<member>] <state> (<origin>)``): a hint of which runs
were re-attached or found after a kill (a killed attempt may not have printed all).

Every run appends one line to ``WORK_DIR/effects/<step>[-<member>].log`` as its
first act, then sleeps a little (so that kills land while runs are going): a run
that happened twice leaves two lines. :func:`expected_effects` names every file a
complete pipeline leaves, :func:`check_outputs` checks what it computed.

The step functions are importable by name (``tests.pipeline_crash_support:square``)
and this module imports only the standard library at its top, so that a worker
starts fast; tether is imported when the pipeline is built.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tether import Pipeline

NAME = "crash"
FAN = (1, 2, 3, 4)
FILES = ("a", "b", "c")
GRID = {"a": [1, 2], "b": [10, 20]}
CHAIN = 4
ENSEMBLE_SEED = 42
ENSEMBLE_N = 3


# -- what the runs do -------------------------------------------------------------------


def effect(work: str, tag: str) -> None:
    """One line in the run's side-effect file (O_APPEND: lines from two runs never mix)."""
    with open(Path(work) / "effects" / f"{tag}.log", "a") as handle:
        handle.write(f"{os.getpid()}\n")


def square(*, x: int, work: str, pause: float) -> int:
    effect(work, f"fan-{x}")
    time.sleep(pause)
    return x * x


def multiply(*, a: int, b: int, work: str, pause: float) -> int:
    effect(work, f"grid-{a}-{b}")
    time.sleep(pause)
    return a * b


def draw(seed: int, *, work: str, pause: float) -> int:
    effect(work, f"ens-{seed}")
    time.sleep(pause)
    return seed % 1000


def total(values: list[int], *, tag: str, work: str, pause: float) -> int:
    effect(work, tag)
    time.sleep(pause)
    return sum(values)


def count_lines(paths: list[Path], *, work: str, pause: float) -> int:
    effect(work, "lines")
    time.sleep(pause)
    return sum(len(Path(path).read_text().splitlines()) for path in paths)


def final(*parts: int, work: str, pause: float) -> list[int]:
    effect(work, "final")
    time.sleep(pause)
    return list(parts)


# -- the pipeline -----------------------------------------------------------------------


def ensemble_seeds() -> list[int]:
    """The ensemble members' int seeds (what ``Step.ensemble`` gives each member)."""
    from tether import Ensemble

    return list(Ensemble(draw, ENSEMBLE_N, ENSEMBLE_SEED, seed_as="int").seeds())


def _shell(work: Path, tag: str, pause: float, then: str) -> str:
    """A command: its side effect, a pause, then its work (in its run folder)."""
    log = shlex.quote(str(work / "effects" / f"{tag}.log"))
    return f"echo $$ >> {log}; sleep {pause}; {then}"


def build(state: Path, work: Path) -> Pipeline:
    """The pipeline: 20 steps, 28 runs, on the local backend in ``work/runs``."""
    from tether import Call, LocalConfig, Pipeline, Step

    (work / "effects").mkdir(parents=True, exist_ok=True)
    w = str(work)
    seed = Step("seed", _job("seed", _shell(work, "seed", 0.2, "echo 5 > seed.txt"), ["seed.txt"]))
    fan = Step("fan", Call(square, work=w, pause=0.3), over={"x": list(FAN)})
    total_fan = Step("sum", Call(total, fan.value, tag="sum", work=w, pause=0.2))
    cached = Step(
        "cached",
        _job("cached", _shell(work, "cached", 0.3, "echo cached > cached.txt"), ["cached.txt"]),
        cache={"store_path": work / "cache.sqlite"},
    )
    files = Step(
        "files",
        _job("files", _shell(work, "files-{n}", 0.2, "echo {n} > part-{n}.txt"), ["part-*"]),
        over={"n": list(FILES)},
        processor="archive",
    )
    concat_all = "cat part-a.txt part-b.txt part-c.txt seed.txt > all.txt"
    concat = Step(
        "concat",
        _job("concat", _shell(work, "concat", 0.1, concat_all), ["all.txt"]),
        inputs_from=[files, seed],
    )
    bundle = Step(
        "bundle",
        processor="archive",
        depends_on=[concat],
        process_kwargs={"destination": str(work / "bundle.zip")},
    )
    chain = []
    before = seed
    for k in range(1, CHAIN + 1):
        name = f"inc-{k}"
        then = f"n=$(cat {before.name}.txt); echo $((n + 1)) > {name}.txt"
        before = Step(
            name, _job(name, _shell(work, name, 0.1, then), [f"{name}.txt"]), inputs_from=[before]
        )
        chain.append(before)
    ens = Step.ensemble(
        "ens", draw, ENSEMBLE_N, ENSEMBLE_SEED, seed_as="int", kwargs={"work": w, "pause": 0.2}
    )
    ens_sum = Step("ens_sum", Call(total, ens.value, tag="ens_sum", work=w, pause=0.1))
    grid = Step("grid", Call(multiply, work=w, pause=0.2), over=GRID)
    grid_sum = Step("grid_sum", Call(total, grid.value, tag="grid_sum", work=w, pause=0.1))
    lines = Step("lines", Call(count_lines, files.outputs, work=w, pause=0.1))
    report = Step(
        "report",
        _job(
            "report",
            _shell(work, "report", 0.1, f"cat {before.name}.txt cached.txt > report.txt"),
            ["report.txt"],
        ),
        inputs_from=[before, cached],
    )
    quiet = Step("quiet", processor="noop", depends_on=[grid])
    last = Step(
        "final",
        Call(final, total_fan.value, grid_sum.value, ens_sum.value, lines.value, work=w, pause=0.1),
    )
    done = Step(
        "done",
        _job("done", _shell(work, "done", 0.1, "true"), []),
        depends_on=[last, bundle, report, quiet],
    )
    steps = [seed, fan, total_fan, cached, files, concat, bundle, *chain, ens, ens_sum, grid]
    steps += [grid_sum, lines, report, quiet, last, done]
    backend = LocalConfig(runs_dir=work / "runs", cancel_grace=1)
    return Pipeline(steps, name=NAME, backend=backend, state=state)


def _job(name: str, command: str, outputs: list[str]) -> Any:
    from tether import Job

    return Job(name=name, command=command, outputs=outputs)


# -- what a complete pipeline leaves --------------------------------------------------------


def expected_effects() -> list[str]:
    """Every side-effect file (without ``.log``): one per run of the pipeline."""
    tags = ["seed", "sum", "cached", "concat", "ens_sum", "grid_sum", "lines", "report"]
    tags += ["final", "done"]
    tags += [f"fan-{x}" for x in FAN]
    tags += [f"files-{n}" for n in FILES]
    tags += [f"inc-{k}" for k in range(1, CHAIN + 1)]
    tags += [f"grid-{a}-{b}" for a in GRID["a"] for b in GRID["b"]]
    tags += [f"ens-{seed}" for seed in ensemble_seeds()]
    return sorted(tags)


def check_outputs(result: Any, work: Path) -> None:
    """Assert what a finished pipeline computed (``result``: its ``PipelineResult``)."""
    fan = [x * x for x in FAN]
    grid = [a * b for a in GRID["a"] for b in GRID["b"]]
    ens = [seed % 1000 for seed in ensemble_seeds()]
    values = {
        "fan": fan,
        "sum": sum(fan),
        "grid": grid,
        "grid_sum": sum(grid),
        "ens": ens,
        "ens_sum": sum(ens),
        "lines": len(FILES),
        "final": [sum(fan), sum(grid), sum(ens), len(FILES)],
    }
    for step in values:
        assert result.value(step) == values[step], step

    def only_output(step: str) -> Path:
        outputs = result.steps[step].outputs
        assert len(outputs) == 1, (step, outputs)
        return Path(outputs[0])

    assert only_output("seed").read_text() == "5\n"
    assert only_output("cached").read_text() == "cached\n"
    assert only_output("concat").read_text() == "".join(f"{n}\n" for n in FILES) + "5\n"
    assert only_output(f"inc-{CHAIN}").read_text() == f"{5 + CHAIN}\n"
    assert only_output("report").read_text() == f"{5 + CHAIN}\ncached\n"
    # The archive postprocessor packed each files run's one output (a resumed step's
    # reports come in the order the journal got them: match them to runs by run id) ...
    runs = {run.run_id: run.index for run in result.steps["files"].runs}
    reports = {runs[r["run_id"]]: r for r in result.steps["files"].postprocess_results}
    assert sorted(reports) == list(range(len(FILES))), reports
    for index, n in enumerate(FILES):
        report = reports[index]
        assert report["success"] and report["files"] == [f"part-{n}.txt"], report
        with zipfile.ZipFile(report["archive"]) as archive:
            assert archive.namelist() == [f"part-{n}.txt"]
            assert archive.read(f"part-{n}.txt").decode() == f"{n}\n"
    # ... and the bundle step packed concat's output at its destination.
    with zipfile.ZipFile(work / "bundle.zip") as archive:
        assert archive.namelist() == ["all.txt"]
        assert archive.read("all.txt").decode() == "a\nb\nc\n5\n"


# -- a kill between journaling a run's id and its handle ----------------------------------

FIND_NAME = "find"
#: Appears in the work folder once the stalling backend's submit has started the run.
SUBMITTED = "submitted"
#: While this file is in the work folder, the ``double`` step's run fails.
FAIL_DOUBLE = "fail-double"


def produce(*, work: str, pause: float) -> int:
    effect(work, "produce")
    time.sleep(pause)
    return 21


def double(value: int, *, work: str) -> int:
    effect(work, "double")
    if (Path(work) / FAIL_DOUBLE).exists():
        raise RuntimeError("failing on purpose (fail-double is there)")
    return 2 * value


def build_find(state: Path, work: Path, *, stall: bool = False, on: str = "local") -> Pipeline:
    """Two Call steps, ``produce`` then ``double`` (of its value), on the local backend,
    or ``on`` the real Slurm cluster (``"slurm"``) or the test Dask scheduler
    (``"dask"``, its address in ``TETHER_TEST_DASK_ADDRESS``).

    With ``stall``, the backend's submit starts the run, leaves the
    :data:`SUBMITTED` marker and then hangs, so the pipeline can be killed after it
    journaled the run's id but before it journaled the run's handle. On Slurm and
    Dask the stalling submit also removes the run's record, as a submitter killed
    between submitting and writing it would leave things: find() must ask the
    queue or the scheduler.
    """
    import anyio

    from tether import Call, DaskConfig, LocalConfig, Pipeline, SlurmConfig, Step

    configs: dict[str, Any] = {
        "local": lambda: LocalConfig(runs_dir=work / "runs", cancel_grace=1),
        "slurm": lambda: SlurmConfig(runs_dir=work / "runs", cancel_grace=1, poll_interval=0.5),
        "dask": lambda: DaskConfig(
            address=os.environ["TETHER_TEST_DASK_ADDRESS"], runs_dir=work / "runs", cancel_grace=1
        ),
    }
    config = configs[on]()
    backend: Any = config
    if stall:
        base: Any = type(config.create())

        class Stalling(base):  # type: ignore[misc]
            async def submit(self, job: Any, *, run_id: str | None = None) -> Any:
                handle = await super().submit(job, run_id=run_id)
                if on != "local":  # killed before the record was written
                    (handle.run_dir / "handle.json").unlink()
                (work / SUBMITTED).write_text(handle.run_id)
                await anyio.sleep(600)  # shielded by the runner: killed here
                return handle

        backend = Stalling(config)
    (work / "effects").mkdir(parents=True, exist_ok=True)
    first = Step("produce", Call(produce, work=str(work), pause=0.5))
    second = Step("double", Call(double, first.value, work=str(work)))
    return Pipeline([first, second], name=FIND_NAME, backend=backend, state=state)


def kill_inside_submit_and_resume(tmp_path: Path, on: str) -> None:
    """The find pipeline ``on`` a backend, SIGKILLed inside its first submit (the run's id
    journaled, its handle not), then resumed: it finds that run, and every step ran once."""
    import signal
    import subprocess

    from tether.pipelines import journal

    state, work = tmp_path / "state.jsonl", tmp_path / "work"
    log = tmp_path / "killed.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, __file__, f"--{on}", "--stall", str(state), str(work)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    marker = work / SUBMITTED
    deadline = time.monotonic() + 60
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert marker.exists(), log.read_text()
    run_id = marker.read_text()
    member = journal.read(state).steps["produce"].members[0]
    assert (member.run_id, member.handle) == (run_id, None)

    result = build_find(state, work, on=on).run_sync()
    assert result.success, result
    run = result.steps["produce"].runs[0]
    assert (run.origin, run.run_id) == ("found", run_id)
    assert result.value("double") == 42
    effects = {p.stem: len(p.read_text().splitlines()) for p in (work / "effects").glob("*.log")}
    assert effects == {"produce": 1, "double": 1}


# -- the script -------------------------------------------------------------------------


async def run(state: Path, work: Path) -> Any:
    """Run (or resume) the pipeline, printing each run event as it happens."""
    import anyio

    pipeline = build(state, work)
    events = pipeline.events()
    outcome: dict[str, Any] = {}

    async def go() -> None:
        outcome["result"] = await pipeline.run(max_concurrency=32)

    async with anyio.create_task_group() as group, events:
        group.start_soon(go)
        async for event in events:
            if event.kind == "run":
                print(
                    f"run {event.step}[{event.member}] {event.state}"
                    + (f" ({event.message})" if event.message else ""),
                    flush=True,
                )
    return outcome["result"]


def main(argv: list[str]) -> int:
    """``STATE_FILE WORK_DIR``: run the crash pipeline; ``--stall`` first: the find one,
    stalling after its first submit (to be killed there); ``--slurm --stall`` or
    ``--dask --stall``: the same on the Slurm cluster or the Dask scheduler."""
    import anyio

    on = "local"
    if argv[:1] in (["--slurm"], ["--dask"]):
        on, argv = argv[0][2:], argv[1:]
    stall = argv[:1] == ["--stall"]
    if stall:
        argv = argv[1:]
    if len(argv) != 2:
        print(
            "usage: pipeline_crash_support.py [--slurm|--dask] [--stall] STATE_FILE WORK_DIR",
            file=sys.stderr,
        )
        return 2
    state, work = Path(argv[0]), Path(argv[1])
    if stall:
        anyio.run(build_find(state, work, stall=True, on=on).run)
        return 1  # never reached: the test kills it while it stalls
    result = anyio.run(run, state, work)
    for name, step in result.steps.items():
        origins = ",".join(str(run.origin) for run in step.runs)
        print(f"step {name} {step.state} resumed={step.resumed} origins={origins}", flush=True)
    print(f"success={result.success}", flush=True)
    return 0 if result.success else 1


if __name__ == "__main__":
    # Run as a script, this file is __main__: import it again as tests.pipeline_crash_support
    # so that its functions are Call targets a worker can import by name (the repository
    # root goes on sys.path here, and the submitter's sys.path travels to the workers).
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests import pipeline_crash_support

    sys.exit(pipeline_crash_support.main(sys.argv[1:]))
