"""Pipeline scale: per-step cost at 1,000 and 10,000 steps, resume, state-file size.

Zero-work steps on ``DummyConfig(runs_dir=...)`` (a run is a folder, ``handle.json``
and its stdout/stderr), at a small and a large size (default 1,000 and 10,000), in
two shapes, with the state file on:

* **steps**: N steps, each ``depends_on`` one root step;
* **fan-out**: one step fanned out (``over``) to N members, below the root;

and for each size the baseline **direct**: the same N + 1 runs without a pipeline
(the root, then N ``submit`` + ``wait`` tasks in one task group). The **overhead**
is a case's median minus direct's median at the same size, per step; the figure
this bench is about is the ratio of the large size's overhead to the small
size's (flat cost: 1.0). Cases are interleaved and their order rotates between
repeats, so that a change in load touches them all alike.

Then the large steps pipeline, finished, is **resumed** in a fresh Python process
(as a re-run script would): the time from building the ``Pipeline`` to ``run()``
returning its full report, every step ``resumed``; the median of a few. And the
**state file**: its size per step at the end of each size's run, and the largest
it grew to while running (sampled every 20 ms), which compaction keeps bounded.

The machine's load and filesystem speed are printed first (``_machine.py``).

**Bars:** overhead ratio (large / small) ≤ ``--max-ratio`` (1.2) for each shape;
resume ≤ ``--max-resume-s`` (1.0 s); state file per step, large / small ≤ 1.2.
Results go to ``bench/results/pipeline_scale.json``.

Usage::

    python bench/pipeline_scale.py [--small 1000] [--large 10000] [--repeats 3]
                                   [--shapes steps,fan-out] [--scratch DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import finish, print_machine, scratch_folder  # (the bench folder, for scripts)
from pipeline_bench import direct

RESULTS = Path(__file__).resolve().parent / "results" / "pipeline_scale.json"
SHAPES = ("steps", "fan-out")


@dataclass
class Report:
    """Everything the bench measured, as written to the JSON results file."""

    small: int
    large: int
    repeats: int
    shapes: list[str]
    scratch: str
    machine: dict[str, float] = field(default_factory=dict)
    #: Seconds for sum(range(10**7)): how fast this CPU runs Python, right now.
    python_s: float = 0.0
    #: "<case> <size>" → ms per step of each repeat (wall time / N)
    ms_per_step: dict[str, list[float]] = field(default_factory=dict)
    median_ms: dict[str, float] = field(default_factory=dict)
    #: "<shape> <size>" → median minus direct's median at that size, per step (ms)
    overhead_ms: dict[str, float] = field(default_factory=dict)
    #: shape → large overhead / small overhead; and the same for plain ms per step
    overhead_ratio: dict[str, float] = field(default_factory=dict)
    per_step_ratio: dict[str, float] = field(default_factory=dict)
    #: "<shape> <size>" → state file bytes per step at the end, and the most seen
    state_bytes_per_step: dict[str, float] = field(default_factory=dict)
    peak_bytes_per_step: dict[str, float] = field(default_factory=dict)
    resume_s: list[float] = field(default_factory=list)
    resume_median_s: float = 0.0
    load_after: list[float] = field(default_factory=list)
    missed_bars: list[str] = field(default_factory=list)
    passed: bool = False


def python_speed() -> float:
    """Seconds this interpreter takes for ``sum(range(10**7))`` (best of 3)."""
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        sum(range(10**7))
        best = min(best, time.perf_counter() - t0)
    return best


# -- the cases ----------------------------------------------------------------------------------


def make_steps(shape: str, n: int) -> list[Any]:
    """A root step, and N zero-work steps (or one step of N members) below it."""
    from tether import Job, Step

    root = Step("root", Job(name="root", command="true"))
    if shape == "steps":
        return [root] + [
            Step(f"s{i}", Job(name=f"s{i}", command="true"), depends_on=[root]) for i in range(n)
        ]
    fan = Job(name="fan", command="true {i}")
    return [root, Step("fan", fan, over={"i": list(range(n))}, depends_on=[root])]


def make_pipeline(shape: str, steps: list[Any], folder: Path) -> Any:
    """The pipeline of ``steps`` on the dummy backend, its state in ``folder``."""
    from tether import DummyConfig, Pipeline

    return Pipeline(
        steps,
        name=f"scale-{shape}",
        backend=DummyConfig(runs_dir=folder / "runs"),
        state=folder / "state.jsonl",
    )


def build(shape: str, n: int, folder: Path) -> Any:
    """The whole pipeline, steps and all."""
    return make_pipeline(shape, make_steps(shape, n), folder)


async def pipelined(shape: str, n: int, folder: Path) -> tuple[float, int]:
    """Build and run the pipeline; return the seconds and the largest state file seen."""
    import anyio

    from tether import RunState, StepState
    from tether.pipelines import journal

    state = folder / "state.jsonl"
    peak = 0

    async def sample() -> None:
        nonlocal peak
        while True:
            with contextlib.suppress(FileNotFoundError):
                peak = max(peak, state.stat().st_size)
            await anyio.sleep(0.02)

    gc.collect()
    async with anyio.create_task_group() as group:
        group.start_soon(sample)
        t0 = time.perf_counter()
        result = await build(shape, n, folder).run(max_concurrency=2 * n + 2)
        elapsed = time.perf_counter() - t0
        group.cancel_scope.cancel()
    peak = max(peak, state.stat().st_size)
    runs = [run for step in result.steps.values() for run in step.runs]
    bad = [s for s, step in result.steps.items() if step.state is not StepState.SUCCEEDED]
    bad += [run.run_id for run in runs if run.state is not RunState.SUCCEEDED]
    if not result.success or bad or len(runs) != n + 1:
        raise RuntimeError(f"{shape} {n}: {len(runs)} runs, not succeeded: {bad[:3]}")
    replay = journal.read(state)
    if {step.state for step in replay.steps.values()} != {"SUCCEEDED"}:
        raise RuntimeError(f"{shape} {n}: the state file does not replay to every step done")
    return elapsed, peak


async def bench(report: Report, scratch: Path) -> None:
    """Warm up, then time every case at both sizes, interleaved, into ``report``."""
    cases = ["direct", *report.shapes]
    for case in cases:  # imports, caches, first folders: untimed
        await run_case(case, 100, scratch / "warmup" / case)
    keys = [f"{case} {n}" for n in (report.small, report.large) for case in cases]
    report.ms_per_step = {key: [] for key in keys}
    for repeat in range(report.repeats):
        shift = repeat % len(keys)
        for key in keys[shift:] + keys[:shift]:
            case, size = key.rsplit(" ", 1)
            n = int(size)
            folder = scratch / f"{repeat}" / key.replace(" ", "-")
            seconds, peak = await run_case(case, n, folder)
            report.ms_per_step[key].append(seconds / n * 1e3)
            if case != "direct":
                size_now = (folder / "state.jsonl").stat().st_size
                report.state_bytes_per_step[key] = size_now / n
                report.peak_bytes_per_step[key] = max(
                    report.peak_bytes_per_step.get(key, 0.0), peak / n
                )
            shutil.rmtree(folder / "runs", ignore_errors=True)
        print(
            f"  repeat {repeat + 1}/{report.repeats}: "
            + ",  ".join(f"{key} {report.ms_per_step[key][-1]:.3f}" for key in keys)
            + " ms/step",
            flush=True,
        )
    report.median_ms = {key: statistics.median(v) for key, v in report.ms_per_step.items()}
    for shape in report.shapes:
        for n in (report.small, report.large):
            base = report.median_ms[f"direct {n}"]
            report.overhead_ms[f"{shape} {n}"] = report.median_ms[f"{shape} {n}"] - base
        small, large = (
            report.overhead_ms[f"{shape} {report.small}"],
            report.overhead_ms[f"{shape} {report.large}"],
        )
        report.overhead_ratio[shape] = large / small if small > 0 else float("inf")
        report.per_step_ratio[shape] = (
            report.median_ms[f"{shape} {report.large}"]
            / report.median_ms[f"{shape} {report.small}"]
        )


async def run_case(case: str, n: int, folder: Path) -> tuple[float, int]:
    folder.mkdir(parents=True, exist_ok=True)
    if case == "direct":
        return await direct(n, folder), 0  # no state file
    return await pipelined(case, n, folder)


# -- resume, in a fresh process -------------------------------------------------------------------


def resume_child(folder: Path, n: int) -> None:
    """Resume the finished steps pipeline; print the seconds as JSON.

    Timed: building the ``Pipeline`` from its steps, and ``run()`` until it returns
    the full report. The steps themselves are the script's own work, made first.
    """
    steps = make_steps("steps", n)
    gc.collect()
    t0 = time.perf_counter()
    result = asyncio.run(make_pipeline("steps", steps, folder).run(max_concurrency=2 * n + 2))
    elapsed = time.perf_counter() - t0
    resumed = sum(1 for step in result.steps.values() if step.resumed)
    if not result.success or resumed != n + 1:
        raise SystemExit(f"resume: {resumed} of {n + 1} steps resumed, success={result.success}")
    print(json.dumps({"seconds": elapsed}))


def resume(report: Report, scratch: Path) -> None:
    """Run the large steps pipeline once, then time its resume in fresh processes."""
    folder = scratch / "resume"
    folder.mkdir(parents=True)
    asyncio.run(pipelined("steps", report.large, folder))
    size = (folder / "state.jsonl").stat().st_size
    for _ in range(report.repeats):
        out = subprocess.run(
            [sys.executable, __file__, "--resume-child", str(folder), str(report.large)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        report.resume_s.append(json.loads(out.splitlines()[-1])["seconds"])
        if (folder / "state.jsonl").stat().st_size != size:
            raise RuntimeError("resuming a finished pipeline changed its state file")
    report.resume_median_s = statistics.median(report.resume_s)
    print(
        "  resume of the finished "
        f"{report.large:,}-step pipeline: " + ", ".join(f"{s:.3f}" for s in report.resume_s) + " s",
        flush=True,
    )


# -- output -------------------------------------------------------------------------------------


def print_table(report: Report) -> None:
    """A markdown table of the medians, the overhead and its ratio, then the other bars."""
    print()
    print(f"| case | {report.small:,} ms/step | {report.large:,} ms/step | ratio |")
    print("|---|---:|---:|---:|")
    for case in ["direct", *report.shapes]:
        small = report.median_ms[f"{case} {report.small}"]
        large = report.median_ms[f"{case} {report.large}"]
        print(f"| {case} | {small:.3f} | {large:.3f} | {large / small:.2f} |")
    for shape in report.shapes:
        small = report.overhead_ms[f"{shape} {report.small}"]
        large = report.overhead_ms[f"{shape} {report.large}"]
        print(
            f"| {shape} overhead | {small:+.3f} | {large:+.3f} | "
            f"**{report.overhead_ratio[shape]:.2f}** |"
        )
    print()
    for key in report.state_bytes_per_step:
        print(
            f"state file, {key}: {report.state_bytes_per_step[key]:,.0f} B/step at the end, "
            f"at most {report.peak_bytes_per_step[key]:,.0f} B/step while running"
        )
    print(f"resume of the finished {report.large:,}-step pipeline: {report.resume_median_s:.3f} s")
    print(f"load average after: {report.load_after}")


def check_bars(report: Report, max_ratio: float, max_resume: float) -> None:
    """Fill ``report.missed_bars``."""
    for shape in report.shapes:
        ratio = report.overhead_ratio[shape]
        if ratio > max_ratio:
            report.missed_bars.append(
                f"{shape}: overhead per step at {report.large:,} is {ratio:.2f}x the "
                f"{report.small:,}-step figure (bar {max_ratio})"
            )
        small = report.state_bytes_per_step[f"{shape} {report.small}"]
        large = report.state_bytes_per_step[f"{shape} {report.large}"]
        if large > 1.2 * small:
            report.missed_bars.append(
                f"{shape}: state file {large:,.0f} B/step at {report.large:,} vs "
                f"{small:,.0f} at {report.small:,} (bar 1.2x)"
            )
    if report.resume_median_s > max_resume:
        report.missed_bars.append(
            f"resume took {report.resume_median_s:.3f} s (bar {max_resume} s)"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=1000, help="the baseline size (1000)")
    parser.add_argument("--large", type=int, default=10000, help="the large size (10000)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of every case (3)")
    parser.add_argument("--shapes", default=",".join(SHAPES), help="steps,fan-out")
    parser.add_argument("--max-ratio", type=float, default=1.2, help="overhead bar (1.2)")
    parser.add_argument("--max-resume-s", type=float, default=1.0, help="resume bar (1.0 s)")
    parser.add_argument(
        "--scratch",
        type=Path,
        default=None,
        help="folder for the run folders and state files (default: tether's state folder)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help="JSON results file")
    parser.add_argument("--resume-child", nargs=2, metavar=("FOLDER", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.shapes = [s for s in args.shapes.split(",") if s]
    if not args.resume_child:
        if not 1 <= args.small < args.large or args.repeats < 1:
            parser.error("need 1 <= --small < --large and --repeats >= 1")
        if not args.shapes or set(args.shapes) - set(SHAPES):
            parser.error(f"--shapes is a comma-separated list of {', '.join(SHAPES)}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the bench; return the process exit status."""
    args = parse_args(argv)
    if args.resume_child:
        resume_child(Path(args.resume_child[0]), int(args.resume_child[1]))
        return 0
    args.scratch = scratch_folder(args.scratch)
    report = Report(
        small=args.small,
        large=args.large,
        repeats=args.repeats,
        shapes=args.shapes,
        scratch=str(args.scratch),
    )
    report.machine = print_machine(args.scratch)
    report.python_s = python_speed()
    print(f"python: sum(range(10**7)) in {report.python_s:.3f} s (a reference for the CPU)")
    print(
        f"pipeline scale: {args.small:,} vs {args.large:,} zero-work dummy steps "
        f"({', '.join(args.shapes)}; direct as baseline), {args.repeats} repeats",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="tether-scale-", dir=args.scratch) as scratch:
        asyncio.run(bench(report, Path(scratch)))
        resume(report, Path(scratch))
    report.load_after = [round(x, 2) for x in os.getloadavg()]
    print_table(report)
    check_bars(report, args.max_ratio, args.max_resume_s)
    report.passed = not report.missed_bars
    return finish(asdict(report), args.output, report.missed_bars)


if __name__ == "__main__":
    sys.exit(main())
