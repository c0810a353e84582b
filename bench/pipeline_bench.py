"""Per-step overhead of the pipeline runner: 1,000 zero-work steps on the dummy backend.

Each pipeline is one root step and N zero-work steps below it (default 1,000), on
``DummyConfig(runs_dir=...)`` (duration 0: a run is a folder, ``handle.json`` and
its stdout/stderr), in two shapes, each with its state file on and off:

* **steps**: N steps, each ``depends_on`` the root;
* **fan-out**: one step fanned out (``over``) to N members, below the root;

against the same work done without a pipeline:

* **direct**: submit the root job and wait for it, then submit the N jobs in an
  anyio task group (one task per job: ``submit`` then ``wait``) and wait for all.

Every timing covers building (the ``Pipeline``, or the jobs) and running, with
``max_concurrency`` above N so it never limits. Every case's outcome is checked
(every step and run SUCCEEDED, and the state file replays to the same), so a
broken run cannot pass as a fast one. The cases are interleaved and their order
rotates from one repeat to the next; run folders are deleted only at the end (see
``local_throughput.py`` on mass deletion). It reports ms per step for each repeat,
the medians, and per case the **overhead** (median minus direct's, per step) and
the ratio to direct. ``--profile`` also runs the steps shape once under cProfile
and prints where the time goes.

**Bar:** the overhead with the state file on (both shapes) ≤ ``--max-overhead-ms``
(default 5 ms per step); the aim is 1 ms. Results go to
``bench/results/pipeline_bench.json``.

Usage::

    python bench/pipeline_bench.py [--steps 1000] [--repeats 5] [--max-overhead-ms 5]
                                   [--profile] [--scratch DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import os
import platform
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from _machine import finish, scratch_folder  # bench/ is the script's folder, first on sys.path

RESULTS = Path(__file__).resolve().parent / "results" / "pipeline_bench.json"
AIM_MS = 1.0
#: Case name → (shape, state file on); "direct" is the baseline.
CASES: dict[str, tuple[str, bool]] = {
    "direct": ("direct", False),
    "steps": ("steps", True),
    "steps, no state": ("steps", False),
    "fan-out": ("fan-out", True),
    "fan-out, no state": ("fan-out", False),
}
GATED = ("steps", "fan-out")


@dataclass
class Report:
    """Everything the bench measured, as written to the JSON results file."""

    steps: int
    repeats: int
    max_overhead_ms: float
    scratch: str
    aim_ms: float = AIM_MS
    #: case → ms per step of each repeat (wall time / N)
    ms_per_step: dict[str, list[float]] = field(default_factory=dict)
    median_ms: dict[str, float] = field(default_factory=dict)
    #: case → median minus direct's median, per step (ms)
    overhead_ms: dict[str, float] = field(default_factory=dict)
    ratio: dict[str, float] = field(default_factory=dict)
    state_file_bytes: int = 0
    profile_top: list[str] = field(default_factory=list)
    load_before: list[float] = field(default_factory=list)
    load_after: list[float] = field(default_factory=list)
    passed: bool = False
    missed_bars: list[str] = field(default_factory=list)
    python: str = platform.python_version()
    machine: str = f"{platform.system()} {platform.release()} {platform.machine()}"
    cpus: int = os.cpu_count() or 0


# -- the cases: each builds, runs and checks; returns the seconds it took --------------------


async def direct(n: int, folder: Path) -> float:
    """The same runs without a pipeline: the root, then N at once in a task group."""
    import anyio

    from tether import DummyConfig, Job, RunResult, RunState

    gc.collect()
    t0 = time.perf_counter()
    backend = DummyConfig(runs_dir=folder / "runs").create()
    root = await (await backend.submit(Job(name="root", command="true"))).wait()
    results: list[RunResult] = []

    async def one(i: int) -> None:
        handle = await backend.submit(Job(name=f"s{i}", command="true"))
        results.append(await handle.wait())

    async with anyio.create_task_group() as group:
        for i in range(n):
            group.start_soon(one, i)
    elapsed = time.perf_counter() - t0
    bad = [r for r in [root, *results] if r.state is not RunState.SUCCEEDED]
    if len(results) != n or bad:
        raise RuntimeError(f"direct: {len(results)} of {n} runs, {len(bad)} did not succeed")
    return elapsed


def build(shape: str, n: int, folder: Path, state: bool) -> Any:
    """The pipeline: a root step, and N zero-work steps (or members) below it."""
    from tether import DummyConfig, Job, Pipeline, Step

    root = Step("root", Job(name="root", command="true"))
    if shape == "steps":
        below = [
            Step(f"s{i}", Job(name=f"s{i}", command="true"), depends_on=[root]) for i in range(n)
        ]
    else:
        fan = Job(name="fan", command="true {i}")
        below = [Step("fan", fan, over={"i": list(range(n))}, depends_on=[root])]
    return Pipeline(
        [root, *below],
        name=f"bench-{shape}",
        backend=DummyConfig(runs_dir=folder / "runs"),
        state=folder / "state.jsonl" if state else None,
    )


def check(name: str, result: Any, shape: str, n: int, state: Path | None) -> None:
    """Every step and run SUCCEEDED, N runs below the root, the state file agrees."""
    from tether import RunState, StepState
    from tether.pipelines import journal

    steps = result.steps
    runs = [run for step in steps.values() for run in step.runs]
    bad = [s for s, step in steps.items() if step.state is not StepState.SUCCEEDED]
    bad += [run.run_id for run in runs if run.state is not RunState.SUCCEEDED]
    expected_steps = n + 1 if shape == "steps" else 2
    if not result.success or bad or len(steps) != expected_steps or len(runs) != n + 1:
        raise RuntimeError(
            f"{name}: success={result.success}, {len(steps)} steps, {len(runs)} runs "
            f"(expected {expected_steps} and {n + 1}); not succeeded: {bad[:3]}"
        )
    if state is not None:
        replay = journal.read(state)
        states = {step.state for step in replay.steps.values()}
        if len(replay.steps) != expected_steps or states != {"SUCCEEDED"}:
            raise RuntimeError(
                f"{name}: the state file replays to {len(replay.steps)} steps {states}"
            )


def pipeline_case(name: str, shape: str, state: bool) -> Callable[[int, Path], Awaitable[float]]:
    async def case(n: int, folder: Path) -> float:
        gc.collect()
        t0 = time.perf_counter()
        pipeline = build(shape, n, folder, state)
        result = await pipeline.run(max_concurrency=2 * n + 2)
        elapsed = time.perf_counter() - t0
        check(name, result, shape, n, pipeline.state)
        return elapsed

    return case


def runner(name: str) -> Callable[[int, Path], Awaitable[float]]:
    shape, state = CASES[name]
    return direct if shape == "direct" else pipeline_case(name, shape, state)


async def bench(report: Report, scratch: Path) -> None:
    """Warm up every case, then time them interleaved into ``report``."""
    n = report.steps
    names = list(CASES)
    for name in names:  # imports, caches, first folders: untimed
        await runner(name)(min(n, 100), scratch / "warmup" / name.replace(", ", "-"))
    report.ms_per_step = {name: [] for name in names}
    for repeat in range(report.repeats):
        shift = repeat % len(names)
        order = names[shift:] + names[:shift]
        for name in order:
            folder = scratch / f"{repeat}" / name.replace(", ", "-")
            seconds = await runner(name)(n, folder)
            report.ms_per_step[name].append(seconds / n * 1e3)
            if name == "steps":
                report.state_file_bytes = (folder / "state.jsonl").stat().st_size
        print(
            f"  repeat {repeat + 1}/{report.repeats}: "
            + ",  ".join(f"{name} {report.ms_per_step[name][-1]:.3f}" for name in names)
            + " ms/step"
        )
    report.median_ms = {name: statistics.median(v) for name, v in report.ms_per_step.items()}
    base = report.median_ms["direct"]
    for name in names[1:]:
        report.overhead_ms[name] = report.median_ms[name] - base
        report.ratio[name] = report.median_ms[name] / base


async def profile(report: Report, scratch: Path, top: int = 25) -> None:
    """The steps shape (state file on) once under cProfile: the top functions by own time."""
    profiler = cProfile.Profile()
    case = runner("steps")
    profiler.enable()
    await case(report.steps, scratch / "profile")
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    report.profile_top = out.getvalue().splitlines()
    print(out.getvalue())


def print_table(report: Report) -> None:
    """A markdown table: ms per step per repeat, the median, overhead and ratio."""
    repeats = range(1, report.repeats + 1)
    print()
    print(f"{report.steps} zero-work steps on the dummy backend, ms per step:")
    print()
    print("| case | " + " | ".join(f"#{i}" for i in repeats) + " | median | overhead | ratio |")
    print("|---" * (report.repeats + 1) + "|---:|---:|---:|")
    for name, values in report.ms_per_step.items():
        over = report.overhead_ms.get(name)
        ratio = report.ratio.get(name)
        print(
            f"| {name} | "
            + " | ".join(f"{v:.3f}" for v in values)
            + f" | {report.median_ms[name]:.3f}"
            + (f" | {over:+.3f} | {ratio:.2f} |" if over is not None else " | | |")
        )
    print()
    kib = report.state_file_bytes / 1024
    print(f"state file after the steps case: {kib:,.0f} KiB")
    state_cost = report.median_ms["steps"] - report.median_ms["steps, no state"]
    print(f"what the state file costs (steps): {state_cost:+.3f} ms/step")
    for name in GATED:
        over = report.overhead_ms[name]
        aim = ": met" if over <= report.aim_ms else ""
        print(
            f"overhead {name}: {over:.3f} ms/step  (bar: <= {report.max_overhead_ms}, "
            f"aim {report.aim_ms}{aim})"
        )
    print(f"load average (1, 5, 15 min): {report.load_before} before, {report.load_after} after")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000, help="zero-work steps (1000)")
    parser.add_argument("--repeats", type=int, default=5, help="rounds of every case (5)")
    parser.add_argument(
        "--max-overhead-ms",
        type=float,
        default=5.0,
        help="fail when a state-file case's median overhead per step is above (5.0)",
    )
    parser.add_argument("--profile", action="store_true", help="also profile the steps shape")
    parser.add_argument(
        "--scratch",
        type=Path,
        default=None,
        help="folder for the run folders and state files (default: tether's state folder)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help="JSON results file")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.repeats < 1:
        parser.error("--steps and --repeats must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the bench; return the process exit status."""
    args = parse_args(argv)
    args.scratch = scratch_folder(args.scratch)
    report = Report(
        steps=args.steps,
        repeats=args.repeats,
        max_overhead_ms=args.max_overhead_ms,
        scratch=str(args.scratch),
    )
    print(
        f"pipeline bench: root + {args.steps} zero-work dummy steps, {len(CASES)} cases x "
        f"{args.repeats} repeats; run folders and state files in {args.scratch}"
    )
    report.load_before = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="tether-bench-", dir=args.scratch) as scratch:
        asyncio.run(bench(report, Path(scratch)))
        if args.profile:
            asyncio.run(profile(report, Path(scratch)))
    report.load_after = [round(x, 2) for x in os.getloadavg()]
    print_table(report)

    for name in GATED:
        if report.overhead_ms[name] > report.max_overhead_ms:
            report.missed_bars.append(
                f"{name}: overhead {report.overhead_ms[name]:.3f} ms/step > "
                f"{report.max_overhead_ms} ms ({report.median_ms[name]:.3f} vs direct "
                f"{report.median_ms['direct']:.3f})"
            )
    report.passed = not report.missed_bars
    return finish(asdict(report), args.output, report.missed_bars)


if __name__ == "__main__":
    sys.exit(main())
