"""Throughput of the local backend against raw asyncio subprocesses.

Runs ``/bin/true`` N times (default 500) with K in flight (default 4), two ways, in
the same process:

* **raw**: ``asyncio.create_subprocess_exec('/bin/true')`` then ``await proc.wait()``
  (plain asyncio, no tether);
* **tether**: ``await backend.submit(Job(command=['/bin/true']))`` then
  ``await handle.wait()`` through :class:`tether.LocalBackend` (a supervisor process,
  a run folder, ``handle.json`` and ``exit.json`` per run).

After one warm-up of each (the first local submit may compile the supervisor), the
(raw, tether) pair is repeated R times, interleaved so that drifts in machine load
hit both alike. The median runs/s of each and the ratio of medians (tether / raw)
are printed, with what each side cost the whole machine (CPU per run from
``/proc/stat``, and how busy the CPUs were: a side near 100% is bound by CPU, one
well below by latency), and written to ``bench/results/local_throughput.json``.
The script exits with status 1 when the ratio is below ``--min-ratio``, so it can
act as a CI gate.

Usage::

    python bench/local_throughput.py [--runs 500] [--concurrency 4] [--repeats 5]
                                     [--supervisor c|python] [--min-ratio 0.8]
                                     [--scratch DIR] [--keep]

``--keep`` leaves the run folders in place (their folder is printed) instead of
deleting them at the end. Use it for back-to-back runs on ext4 without a journal:
there, for a minute or more after a mass deletion, every file created in the same
block group waits while the inode allocator reads the inode table to skip recently
deleted inodes, and the next run would measure that instead of tether.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from _machine import finish, scratch_folder  # bench/ is the script's folder, first on sys.path

RESULTS = Path(__file__).resolve().parent / "results" / "local_throughput.json"
COMMAND = "/bin/true"


@dataclass
class Report:
    """Everything the bench measured, as written to the JSON results file."""

    runs: int
    concurrency: int
    repeats: int
    supervisor: str
    supervisor_argv: list[str]
    min_ratio: float
    scratch: str
    raw_runs_per_s: list[float] = field(default_factory=list)
    tether_runs_per_s: list[float] = field(default_factory=list)
    #: Machine CPU per run (every process and the kernel) and busy share, per repeat:
    #: a CPU-bound side is near 100% busy, a latency-bound one is not.
    raw_cpu_ms_per_run: list[float] = field(default_factory=list)
    tether_cpu_ms_per_run: list[float] = field(default_factory=list)
    raw_busy: list[float] = field(default_factory=list)
    tether_busy: list[float] = field(default_factory=list)
    raw_median: float = 0.0
    tether_median: float = 0.0
    ratio: float = 0.0
    fs_folders_per_s: float = 0.0
    passed: bool = False
    python: str = platform.python_version()
    machine: str = f"{platform.system()} {platform.release()} {platform.machine()}"
    cpus: int = os.cpu_count() or 0


@dataclass
class Batch:
    """One timed batch: its speed and what it cost the whole machine."""

    runs_per_s: float
    cpu_ms_per_run: float  # every process and the kernel, from /proc/stat
    busy: float  # share of all CPUs' time not idle, 0 to 1


def machine_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine so far, from /proc/stat."""
    with open("/proc/stat") as stat:
        ticks = [int(field) for field in stat.readline().split()[1:]]
    idle = ticks[3] + ticks[4]  # idle and iowait
    return sum(ticks) - idle, sum(ticks)


async def run_pool(runs: int, concurrency: int, one: Callable[[], Awaitable[None]]) -> Batch:
    """Call ``one()`` ``runs`` times with ``concurrency`` in flight; time and cost it."""
    remaining = runs

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await one()

    busy_before, total_before = machine_ticks()
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    busy_after, total_after = machine_ticks()
    busy = busy_after - busy_before
    return Batch(
        runs_per_s=runs / elapsed,
        cpu_ms_per_run=busy / os.sysconf("SC_CLK_TCK") / runs * 1e3,
        busy=busy / max(total_after - total_before, 1),
    )


async def raw_once() -> None:
    """One run through plain asyncio: spawn ``/bin/true`` and wait for it."""
    proc = await asyncio.create_subprocess_exec(COMMAND)
    code = await proc.wait()
    if code != 0:
        raise RuntimeError(f"{COMMAND} exited with {code}")


def make_tether_once(runs_dir: Path) -> Callable[[], Awaitable[None]]:
    """One run through tether's local backend, its run folder under ``runs_dir``."""
    import tether

    backend = tether.LocalConfig(runs_dir=runs_dir).create()
    job = tether.Job(command=[COMMAND])

    async def once() -> None:
        handle = await backend.submit(job)
        result = await handle.wait()
        if result.state is not tether.RunState.SUCCEEDED:
            raise RuntimeError(f"tether run {result.run_id} ended {result.state.value}: {result}")

    return once


def folders_per_second(scratch: Path, count: int = 200) -> float:
    """How fast this filesystem creates run-folder-like trees (a folder + 4 files).

    Printed as context: tether's runs create files, raw subprocesses do not, so a
    filesystem in a slow state (ext4 without a journal just after mass deletion)
    lowers the ratio without anything in tether changing.
    """
    probe = scratch / "fs-probe"
    probe.mkdir()
    began = time.perf_counter()
    for i in range(count):
        folder = probe / str(i)
        folder.mkdir()
        for name in ("handle.json", "stdout", "stderr", "exit.json"):
            (folder / name).touch()
    return count / (time.perf_counter() - began)


async def bench(report: Report, scratch: Path) -> None:
    """Warm up, then time interleaved (raw, tether) pairs into ``report``."""
    # Run folders are only deleted at the end, with ``scratch``: on ext4 without a
    # journal, creating files just after deleting many is slow (the inode allocator
    # skips recently deleted inodes), which would skew every repeat after the first.
    report.fs_folders_per_s = folders_per_second(scratch)
    print(f"  filesystem: {report.fs_folders_per_s:,.0f} run-folder trees/s in {scratch}")
    warmup = max(report.concurrency * 4, 20)
    await run_pool(warmup, report.concurrency, raw_once)
    await run_pool(warmup, report.concurrency, make_tether_once(scratch / "warmup"))

    from tether._supervisor import cached_supervisor

    report.supervisor_argv = cached_supervisor() or []
    for i in range(report.repeats):
        tether_once = make_tether_once(scratch / f"runs-{i}")
        raw = await run_pool(report.runs, report.concurrency, raw_once)
        teth = await run_pool(report.runs, report.concurrency, tether_once)
        report.raw_runs_per_s.append(raw.runs_per_s)
        report.tether_runs_per_s.append(teth.runs_per_s)
        report.raw_cpu_ms_per_run.append(raw.cpu_ms_per_run)
        report.tether_cpu_ms_per_run.append(teth.cpu_ms_per_run)
        report.raw_busy.append(raw.busy)
        report.tether_busy.append(teth.busy)
        print(
            f"  repeat {i + 1}/{report.repeats}: raw {raw.runs_per_s:7.1f} runs/s "
            f"({raw.cpu_ms_per_run:.2f} ms CPU/run, {raw.busy:.0%} busy)   "
            f"tether {teth.runs_per_s:7.1f} runs/s "
            f"({teth.cpu_ms_per_run:.2f} ms CPU/run, {teth.busy:.0%} busy)"
        )

    report.raw_median = statistics.median(report.raw_runs_per_s)
    report.tether_median = statistics.median(report.tether_runs_per_s)
    report.ratio = report.tether_median / report.raw_median
    report.passed = report.ratio >= report.min_ratio


def print_table(report: Report) -> None:
    """The summary table: per-repeat figures and the medians."""
    header = f"{'':8}" + "".join(f"{f'#{i + 1}':>9}" for i in range(report.repeats))
    print()
    print(f"{header}{'median':>10}")
    for name, values, median in (
        ("raw", report.raw_runs_per_s, report.raw_median),
        ("tether", report.tether_runs_per_s, report.tether_median),
    ):
        print(f"{name:8}" + "".join(f"{v:9.1f}" for v in values) + f"{median:10.1f}")
    for name, cpu, busy in (
        ("raw", report.raw_cpu_ms_per_run, report.raw_busy),
        ("tether", report.tether_cpu_ms_per_run, report.tether_busy),
    ):
        print(
            f"{name:8}machine CPU {statistics.median(cpu):.3f} ms/run, "
            f"{statistics.median(busy):.0%} busy (medians)"
        )
    print(f"\nratio of medians (tether/raw): {report.ratio:.3f}  (bar: >= {report.min_ratio})")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=500, help="runs per timed batch (500)")
    parser.add_argument("--concurrency", type=int, default=4, help="runs in flight (4)")
    parser.add_argument("--repeats", type=int, default=5, help="(raw, tether) pairs (5)")
    parser.add_argument(
        "--supervisor",
        choices=("auto", "c", "python"),
        default=None,
        help="sets TETHER_SUPERVISOR (default: leave the environment as is)",
    )
    parser.add_argument(
        "--min-ratio",
        type=float,
        default=0.8,
        help="fail when median tether runs/s / median raw runs/s is below this (0.8)",
    )
    parser.add_argument(
        "--scratch",
        type=Path,
        default=None,
        help="folder for the temporary run folders (default: beside tether's default "
        "runs folder, i.e. where users' runs go)",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="leave the run folders in place instead of deleting them at the end",
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help="JSON results file")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.concurrency < 1 or args.repeats < 1:
        parser.error("--runs, --concurrency and --repeats must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the bench; return the process exit status."""
    args = parse_args(argv)
    if args.supervisor is not None:
        os.environ["TETHER_SUPERVISOR"] = args.supervisor  # before tether is imported
    args.scratch = scratch_folder(args.scratch)
    report = Report(
        runs=args.runs,
        concurrency=args.concurrency,
        repeats=args.repeats,
        supervisor=os.environ.get("TETHER_SUPERVISOR", "auto"),
        supervisor_argv=[],
        min_ratio=args.min_ratio,
        scratch=str(args.scratch),
    )
    print(
        f"local throughput: {args.runs} x {COMMAND}, {args.concurrency} in flight, "
        f"{args.repeats} repeats, supervisor={report.supervisor}, run folders in {report.scratch}"
    )
    scratch = Path(tempfile.mkdtemp(prefix="tether-bench-", dir=args.scratch))
    try:
        asyncio.run(bench(report, scratch))
    finally:
        if args.keep:
            print(f"run folders kept in {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    print_table(report)

    missed = []
    if not report.passed:
        missed.append(
            f"tether reaches {report.ratio:.3f} of raw asyncio throughput "
            f"({report.tether_median:.1f} vs {report.raw_median:.1f} runs/s), "
            f"below the bar of {report.min_ratio}"
        )
    return finish(asdict(report), args.output, missed)


if __name__ == "__main__":
    sys.exit(main())
