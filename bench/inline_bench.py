"""Per-call overhead of the inline backend's process pool against the stdlib and joblib.

Runs ``math.sqrt(float(i))`` for i in 0..N-1 (default N = 2,000) with 2 worker
processes (``--n-jobs``), three ways, in the same process:

* **tether**: ``await backend.submit(Call(math.sqrt, float(i)))`` for every i, then
  ``await handle.wait()`` on each handle in order, through
  ``InlineConfig(mode="processes", n_jobs=2).create()``;
* **ppe**: ``executor.submit(math.sqrt, float(i))`` for every i, then
  ``future.result()`` on each in order, through one
  ``concurrent.futures.ProcessPoolExecutor(2)``;
* **joblib**: ``parallel(delayed(math.sqrt)(float(i)) for i in ...)`` through one
  ``Parallel(n_jobs=2, batch_size=1)`` (loky), kept open as a context manager so
  its workers and backend are reused from one batch to the next.

The function comes from an importable module, so all three pickle it by reference.
The timed batch is everything the user waits for: building the ``Call`` objects
(or ``delayed`` tuples), submitting, and collecting the values. After it, every
value is checked (list and sum), so a broken run cannot look fast.

Each contender first runs one whole batch untimed, so every worker process has
started and every import is done. Then each of R repeats (``--repeats``, default
5) times one batch of each, their order rotating from one repeat to the next so
that changes in machine load affect all three alike. The figure is µs per call
(batch wall time / N); the median over the repeats and the ratios tether/ppe,
tether/joblib and joblib/ppe are printed.

As information (no bar), each repeat also times ``--sequential`` calls (default
200) one at a time, submit then wait, through tether and through the executor;
the figure is the median latency of one call.

**Bar:** tether/ppe ≤ ``--max-ratio`` (default 2.0; the aim is 1.5) and
tether/joblib < ``--max-joblib-ratio`` (default 1.0: tether faster than joblib
with ``batch_size=1``). The figures are written to
``bench/results/inline_bench.json``; the exit status is 1 when the bar is missed.

Usage::

    python bench/inline_bench.py [--calls 2000] [--repeats 5] [--n-jobs 2]
                                 [--sequential 200] [--max-ratio 2.0]
                                 [--max-joblib-ratio 1.0]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import gc
import math
import multiprocessing
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from _machine import finish  # bench/ is the script's folder, first on sys.path

if TYPE_CHECKING:
    from joblib import Parallel

    from tether import InlineBackend

RESULTS = Path(__file__).resolve().parent / "results" / "inline_bench.json"
FUNCTION = math.sqrt  # importable (pickled by reference), trivial, exact to check
AIM_RATIO = 1.5
CONTENDERS = ("tether", "ppe", "joblib")


@dataclass
class Report:
    """Everything the bench measured, as written to the JSON results file."""

    calls: int
    repeats: int
    n_jobs: int
    sequential: int
    max_ratio: float
    max_joblib_ratio: float
    aim_ratio: float = AIM_RATIO
    function: str = f"{FUNCTION.__module__}.{FUNCTION.__qualname__}"
    ppe_start_method: str = ""
    joblib_version: str = ""
    workers_after_warmup: dict[str, int] = field(default_factory=dict)
    # µs per call of each batch, per repeat
    tether_us: list[float] = field(default_factory=list)
    ppe_us: list[float] = field(default_factory=list)
    joblib_us: list[float] = field(default_factory=list)
    tether_median: float = 0.0
    ppe_median: float = 0.0
    joblib_median: float = 0.0
    tether_ppe_ratio: float = 0.0
    tether_joblib_ratio: float = 0.0
    joblib_ppe_ratio: float = 0.0
    # one call at a time: the median latency of one call, per repeat (µs)
    tether_seq_us: list[float] = field(default_factory=list)
    ppe_seq_us: list[float] = field(default_factory=list)
    tether_seq_median: float = 0.0
    ppe_seq_median: float = 0.0
    seq_ratio: float = 0.0
    load_before: list[float] = field(default_factory=list)
    load_after: list[float] = field(default_factory=list)
    passed: bool = False
    missed_bars: list[str] = field(default_factory=list)
    python: str = platform.python_version()
    machine: str = f"{platform.system()} {platform.release()} {platform.machine()}"
    cpus: int = os.cpu_count() or 0


def expected_values(calls: int) -> list[float]:
    """What the batch must return, computed here."""
    return [FUNCTION(float(i)) for i in range(calls)]


def check(name: str, values: list[Any], expected: list[float]) -> None:
    """Every value right, in order: a broken run must not pass as a fast one."""
    if len(values) != len(expected) or math.fsum(values) != math.fsum(expected):
        raise RuntimeError(
            f"{name}: {len(values)} values summing to {math.fsum(values)!r}; expected "
            f"{len(expected)} summing to {math.fsum(expected)!r}"
        )
    if values != expected:
        raise RuntimeError(f"{name}: the values are right in sum but not one by one")


def child_workers() -> dict[str, int]:
    """This process's children by kind (from ``/proc``): tether, executor, loky, trackers."""
    counts = dict.fromkeys(("tether", "executor", "loky", "tracker"), 0)
    me = str(os.getpid())
    proc = Path("/proc")
    if not proc.is_dir():
        return counts
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = next((ln.split()[1] for ln in status.splitlines() if ln.startswith("PPid:")), "")
        if ppid != me:
            continue
        if b"--pool" in cmdline:
            counts["tether"] += 1
        elif b"resource_tracker" in cmdline:
            counts["tracker"] += 1
        elif b"LokyProcess" in cmdline:
            counts["loky"] += 1
        else:  # the executor's workers are forks of this process: same command line
            counts["executor"] += 1
    return counts


# -- the contenders: one batch each, returning (seconds, values) ---------------------------


async def tether_batch(backend: InlineBackend, calls: int) -> tuple[float, list[Any]]:
    """Submit every call, then wait for each handle in order."""
    from tether import Call, RunState

    gc.collect()
    t0 = time.perf_counter()
    handles = [await backend.submit(Call(FUNCTION, float(i))) for i in range(calls)]
    results = [await handle.wait() for handle in handles]
    elapsed = time.perf_counter() - t0
    failed = [r for r in results if r.state is not RunState.SUCCEEDED]
    if failed:
        raise RuntimeError(f"tether: {len(failed)} calls did not succeed, e.g. {failed[0]}")
    return elapsed, [r.value for r in results]


def ppe_batch(
    executor: concurrent.futures.ProcessPoolExecutor, calls: int
) -> tuple[float, list[Any]]:
    """Submit every call, then ``result()`` each future in order."""
    gc.collect()
    t0 = time.perf_counter()
    futures = [executor.submit(FUNCTION, float(i)) for i in range(calls)]
    values = [future.result() for future in futures]
    return time.perf_counter() - t0, values


def joblib_batch(parallel: Parallel, calls: int) -> tuple[float, list[Any]]:
    """One ``Parallel`` call over every argument (``batch_size=1``)."""
    from joblib import delayed

    gc.collect()
    t0 = time.perf_counter()
    values = parallel(delayed(FUNCTION)(float(i)) for i in range(calls))
    return time.perf_counter() - t0, list(values)


async def tether_sequential(backend: InlineBackend, calls: int) -> list[float]:
    """Latency (µs) of each of ``calls`` calls made one at a time: submit, then wait."""
    from tether import Call

    gc.collect()
    latencies = []
    values = []
    for i in range(calls):
        t0 = time.perf_counter_ns()
        handle = await backend.submit(Call(FUNCTION, float(i)))
        result = await handle.wait()
        latencies.append((time.perf_counter_ns() - t0) / 1e3)
        values.append(result.value)
    check("tether sequential", values, expected_values(calls))
    return latencies


def ppe_sequential(executor: concurrent.futures.ProcessPoolExecutor, calls: int) -> list[float]:
    """Latency (µs) of each of ``calls`` calls made one at a time: submit, then result."""
    gc.collect()
    latencies = []
    values = []
    for i in range(calls):
        t0 = time.perf_counter_ns()
        value = executor.submit(FUNCTION, float(i)).result()
        latencies.append((time.perf_counter_ns() - t0) / 1e3)
        values.append(value)
    check("ppe sequential", values, expected_values(calls))
    return latencies


async def bench(report: Report) -> None:
    """Warm every contender up, then time interleaved batches into ``report``."""
    import joblib
    from joblib import Parallel

    from tether import InlineConfig

    report.joblib_version = joblib.__version__
    calls, n_jobs = report.calls, report.n_jobs
    expected = expected_values(calls)
    # The executor first: its workers fork from this process, before tether's slot
    # threads exist (fork copies the memory, not the threads).
    executor = concurrent.futures.ProcessPoolExecutor(n_jobs)
    report.ppe_start_method = multiprocessing.get_start_method()
    backend = InlineConfig(mode="processes", n_jobs=n_jobs).create()
    with executor, Parallel(n_jobs=n_jobs, batch_size=1) as parallel:

        async def run_tether() -> tuple[float, list[Any]]:
            return await tether_batch(backend, calls)

        async def run_ppe() -> tuple[float, list[Any]]:
            return ppe_batch(executor, calls)

        async def run_joblib() -> tuple[float, list[Any]]:
            return joblib_batch(parallel, calls)

        runners: dict[str, Callable[[], Awaitable[tuple[float, list[Any]]]]] = {
            "tether": run_tether,
            "ppe": run_ppe,
            "joblib": run_joblib,
        }
        # Warm-up: one whole batch each, untimed, so that every worker process has
        # started (pools start them on demand) and every import is done.
        for name in ("ppe", "joblib", "tether"):
            _, values = await runners[name]()
            check(f"{name} warm-up", values, expected)
        await tether_sequential(backend, 5)
        ppe_sequential(executor, 5)
        report.workers_after_warmup = child_workers()
        print(
            "  worker processes after warm-up: "
            + ", ".join(f"{kind} {n}" for kind, n in report.workers_after_warmup.items())
        )

        for repeat in range(report.repeats):
            shift = repeat % len(CONTENDERS)
            order = CONTENDERS[shift:] + CONTENDERS[:shift]
            figures = {}
            for name in order:
                seconds, values = await runners[name]()
                check(name, values, expected)
                figures[name] = seconds / calls * 1e6
                getattr(report, f"{name}_us").append(figures[name])
            if repeat % 2:
                ppe_seq = statistics.median(ppe_sequential(executor, report.sequential))
                tether_seq = statistics.median(await tether_sequential(backend, report.sequential))
            else:
                tether_seq = statistics.median(await tether_sequential(backend, report.sequential))
                ppe_seq = statistics.median(ppe_sequential(executor, report.sequential))
            report.tether_seq_us.append(tether_seq)
            report.ppe_seq_us.append(ppe_seq)
            print(
                f"  repeat {repeat + 1}/{report.repeats} ({', '.join(order)}): "
                + "   ".join(f"{name} {figures[name]:6.1f}" for name in CONTENDERS)
                + f" us/call;  one at a time: tether {tether_seq:6.1f}, ppe {ppe_seq:6.1f} us"
            )

    for name in CONTENDERS:
        setattr(report, f"{name}_median", statistics.median(getattr(report, f"{name}_us")))
    report.tether_ppe_ratio = report.tether_median / report.ppe_median
    report.tether_joblib_ratio = report.tether_median / report.joblib_median
    report.joblib_ppe_ratio = report.joblib_median / report.ppe_median
    report.tether_seq_median = statistics.median(report.tether_seq_us)
    report.ppe_seq_median = statistics.median(report.ppe_seq_us)
    report.seq_ratio = report.tether_seq_median / report.ppe_seq_median


def print_table(report: Report) -> None:
    """The summary table: per-repeat figures, the medians and the ratios."""
    header = f"{'us/call':22}" + "".join(f"{f'#{i + 1}':>8}" for i in range(report.repeats))
    print()
    print(f"{header}{'median':>9}")
    rows = [
        (f"{name} ({report.calls} calls)", getattr(report, f"{name}_us"), name)
        for name in CONTENDERS
    ]
    for label, values, name in rows:
        median = getattr(report, f"{name}_median")
        print(f"{label:22}" + "".join(f"{v:8.1f}" for v in values) + f"{median:9.1f}")
    print(f"one at a time ({report.sequential} calls, median latency):")
    for name, values, median in (
        ("  tether", report.tether_seq_us, report.tether_seq_median),
        ("  ppe", report.ppe_seq_us, report.ppe_seq_median),
    ):
        print(f"{name:22}" + "".join(f"{v:8.1f}" for v in values) + f"{median:9.1f}")
    print(
        f"\ntether/ppe {report.tether_ppe_ratio:.2f}  (bar: <= {report.max_ratio}, aim "
        f"{report.aim_ratio}{': met' if report.tether_ppe_ratio <= report.aim_ratio else ''})"
    )
    print(f"tether/joblib {report.tether_joblib_ratio:.2f}  (bar: < {report.max_joblib_ratio})")
    print(f"joblib/ppe {report.joblib_ppe_ratio:.2f}  (no bar)")
    print(f"one at a time, tether/ppe {report.seq_ratio:.2f}  (no bar)")
    before, after = report.load_before, report.load_after
    print(f"load average (1, 5, 15 min): {before} before, {after} after")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per timed batch (2000)")
    parser.add_argument("--repeats", type=int, default=5, help="rounds of the three (5)")
    parser.add_argument("--n-jobs", type=int, default=2, help="worker processes (2)")
    parser.add_argument(
        "--sequential", type=int, default=200, help="one-at-a-time calls per repeat (200)"
    )
    parser.add_argument(
        "--max-ratio",
        type=float,
        default=2.0,
        help="fail when median tether us/call / median executor us/call is above (2.0)",
    )
    parser.add_argument(
        "--max-joblib-ratio",
        type=float,
        default=1.0,
        help="fail unless median tether us/call / median joblib us/call is below (1.0)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help="JSON results file")
    args = parser.parse_args(argv)
    if min(args.calls, args.repeats, args.n_jobs, args.sequential) < 1:
        parser.error("--calls, --repeats, --n-jobs and --sequential must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the bench; return the process exit status."""
    args = parse_args(argv)
    try:
        import joblib  # noqa: F401 (one of the contenders)
    except ImportError:
        print("FAIL: this bench compares with joblib: pip install joblib", file=sys.stderr)
        return 1
    report = Report(
        calls=args.calls,
        repeats=args.repeats,
        n_jobs=args.n_jobs,
        sequential=args.sequential,
        max_ratio=args.max_ratio,
        max_joblib_ratio=args.max_joblib_ratio,
    )
    print(
        f"inline bench: {args.calls} x {report.function} with {args.n_jobs} worker processes "
        f"(tether, ProcessPoolExecutor, joblib batch_size=1), {args.repeats} repeats; "
        f"{args.sequential} one at a time (tether, executor)"
    )
    report.load_before = [round(x, 2) for x in os.getloadavg()]
    asyncio.run(bench(report))
    report.load_after = [round(x, 2) for x in os.getloadavg()]
    print_table(report)

    if report.tether_ppe_ratio > report.max_ratio:
        report.missed_bars.append(
            f"tether/ppe {report.tether_ppe_ratio:.2f} > {report.max_ratio} "
            f"({report.tether_median:.1f} vs {report.ppe_median:.1f} us/call)"
        )
    if report.tether_joblib_ratio >= report.max_joblib_ratio:
        report.missed_bars.append(
            f"tether/joblib {report.tether_joblib_ratio:.2f} >= {report.max_joblib_ratio} "
            f"({report.tether_median:.1f} vs {report.joblib_median:.1f} us/call)"
        )
    report.passed = not report.missed_bars
    return finish(asdict(report), args.output, report.missed_bars)


if __name__ == "__main__":
    sys.exit(main())
