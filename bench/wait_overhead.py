"""What waiting on many local runs costs the waiting process: CPU time and threads.

Two cases, each with N runs (default 200) of ``sleep 2`` through the local backend:

* **in-process**: this process submits the runs, then awaits every handle at once
  (``asyncio.gather``);
* **re-attached**: this process submits the runs and saves each handle to a file;
  a fresh Python process (this script with ``--child``, started and importing
  tether *before* the submits so that its start-up does not eat into the runs)
  loads them all with ``tether.load_handle`` and awaits them at once.

In both, only the waiting is measured: from after the last submit (or load) returns
until the last wait returns. The figures are the waiting process's own CPU time
(``getrusage(RUSAGE_SELF)`` user + system; the runs are not its children's time
anyway, and RUSAGE_CHILDREN is not counted) and its largest OS thread count
(``Threads:`` of ``/proc/self/status``, sampled every 0.1 s by a task on the same
event loop, next to ``threading.active_count()``).

Bars: at most 150 ms of CPU and at most 4 threads in each case. The figures are
printed and written to ``bench/results/wait_overhead.json``; the exit status is 1
when a bar is missed.

Usage::

    python bench/wait_overhead.py [--runs 200] [--sleep 2] [--supervisor c|python]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from _machine import finish, scratch_folder  # bench/ is the script's folder, first on sys.path

if TYPE_CHECKING:
    from tether import RunHandle

RESULTS = Path(__file__).resolve().parent / "results" / "wait_overhead.json"
MAX_CPU_MS = 150.0
MAX_THREADS = 4
SAMPLE_EVERY = 0.1


@dataclass
class WaitFigures:
    """What one case measured while waiting."""

    runs: int
    cpu_ms: float
    max_threads_os: int
    max_threads_python: int
    thread_names: list[str]
    wait_seconds: float
    finished_before_wait: int
    prepare_seconds: float  # submitting (in-process) or loading (re-attached)
    all_succeeded: bool

    def verdict(self, max_cpu_ms: float, max_threads: int) -> list[str]:
        """The bars this case misses, as messages (empty when it passes)."""
        misses = []
        if self.cpu_ms > max_cpu_ms:
            misses.append(f"CPU {self.cpu_ms:.1f} ms > {max_cpu_ms:g} ms")
        if self.max_threads_os > max_threads:
            misses.append(f"{self.max_threads_os} threads > {max_threads}")
        if not self.all_succeeded:
            misses.append("not every run succeeded")
        return misses


def cpu_seconds() -> float:
    """User + system CPU time of this process alone (children not included)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def os_threads() -> int:
    """This process's thread count as the kernel sees it."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    raise RuntimeError("no Threads: line in /proc/self/status")


class ThreadSampler:
    """Samples the thread counts every ``SAMPLE_EVERY`` seconds; keeps the largest."""

    def __init__(self) -> None:
        self.max_os = 0
        self.max_python = 0
        self.names: list[str] = []

    def sample(self) -> None:
        """Take one sample now."""
        count = os_threads()
        self.max_python = max(self.max_python, threading.active_count())
        if count > self.max_os:
            self.max_os = count
            self.names = sorted(t.name for t in threading.enumerate())

    async def run(self) -> None:
        """Sample until cancelled."""
        while True:
            self.sample()
            await asyncio.sleep(SAMPLE_EVERY)


def finished_count(handles: list[RunHandle]) -> int:
    """How many runs have already recorded their exit (a plain file check)."""
    return sum((Path(str(getattr(h, "run_dir", ""))) / "exit.json").exists() for h in handles)


async def measure_wait(handles: list[RunHandle], prepare_seconds: float) -> WaitFigures:
    """Await all ``handles`` at once; measure this process's CPU and threads meanwhile."""
    from tether import RunState

    finished = finished_count(handles)
    sampler = ThreadSampler()
    sampler.sample()
    sampling = asyncio.create_task(sampler.run())
    cpu0, wall0 = cpu_seconds(), time.perf_counter()
    results = await asyncio.gather(*(handle.wait() for handle in handles))
    cpu1, wall1 = cpu_seconds(), time.perf_counter()
    sampler.sample()
    sampling.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sampling
    return WaitFigures(
        runs=len(handles),
        cpu_ms=(cpu1 - cpu0) * 1000,
        max_threads_os=sampler.max_os,
        max_threads_python=sampler.max_python,
        thread_names=sampler.names,
        wait_seconds=wall1 - wall0,
        finished_before_wait=finished,
        prepare_seconds=prepare_seconds,
        all_succeeded=all(r.state is RunState.SUCCEEDED for r in results),
    )


async def submit_all(runs_dir: Path, runs: int, seconds: float) -> tuple[list[RunHandle], float]:
    """Submit ``runs`` runs of ``sleep seconds``; return the handles and the time it took."""
    import tether

    backend = tether.LocalConfig(runs_dir=runs_dir).create()
    job = tether.Job(name="sleep", command=["sleep", f"{seconds:g}"])
    started = time.perf_counter()
    handles: list[RunHandle] = [await backend.submit(job) for _ in range(runs)]
    return handles, time.perf_counter() - started


async def in_process(runs_dir: Path, runs: int, seconds: float) -> WaitFigures:
    """Case 1: submit here, wait here."""
    handles, took = await submit_all(runs_dir, runs, seconds)
    return await measure_wait(handles, took)


async def submit_and_save(
    runs_dir: Path, handles_dir: Path, runs: int, seconds: float
) -> list[RunHandle]:
    """Case 2, first half: submit and save every handle to ``handles_dir``."""
    handles, _ = await submit_all(runs_dir, runs, seconds)
    for i, handle in enumerate(handles):
        await handle.save(handles_dir / f"{i:04d}.json")
    return handles


async def reap(handles: list[RunHandle]) -> None:
    """Wait for our own handles too, so the supervisors (our children) get reaped."""
    await asyncio.gather(*(handle.wait() for handle in handles))


def reattached(runs_dir: Path, runs: int, seconds: float) -> WaitFigures:
    """Case 2: submit and save here; load and wait in a fresh Python process."""
    handles_dir = runs_dir.parent / "handles"
    handles_dir.mkdir()
    child = subprocess.Popen(
        [sys.executable, __file__, "--child"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        ready = child.stdout.readline().strip()  # the child has imported tether
        if ready != "ready":
            raise RuntimeError(f"the waiting process did not start (said {ready!r})")
        handles = asyncio.run(submit_and_save(runs_dir, handles_dir, runs, seconds))
        out, _ = child.communicate(f"{handles_dir}\n", timeout=seconds + 120)
    except BaseException:
        child.kill()
        child.wait()
        raise
    asyncio.run(reap(handles))
    if child.returncode != 0:
        raise RuntimeError(f"the waiting process failed with status {child.returncode}")
    return WaitFigures(**json.loads(out.strip().splitlines()[-1]))


async def child_wait(paths: list[Path]) -> WaitFigures:
    """In the fresh process: load every saved handle, then measure waiting on them."""
    import tether

    started = time.perf_counter()
    handles = [await tether.load_handle(path) for path in paths]
    return await measure_wait(handles, time.perf_counter() - started)


def child_main() -> int:
    """``--child``: import tether, say ready, read the handles folder, report JSON."""
    import tether  # noqa: F401  (imported before the parent submits: not measured)

    print("ready", flush=True)
    handles_dir = Path(sys.stdin.readline().strip())
    figures = asyncio.run(child_wait(sorted(handles_dir.glob("*.json"))))
    print(json.dumps(asdict(figures)), flush=True)
    return 0


def show(name: str, figures: WaitFigures, misses: list[str]) -> None:
    """One case's figures, human-readable."""
    print(f"{name}:")
    print(f"  prepare           {figures.prepare_seconds * 1000:8.1f} ms  (submit / load)")
    print(
        f"  wait              {figures.wait_seconds * 1000:8.1f} ms  "
        f"({figures.finished_before_wait}/{figures.runs} already finished at start)"
    )
    print(f"  CPU while waiting {figures.cpu_ms:8.1f} ms  (bar: <= {MAX_CPU_MS:g} ms)")
    print(
        f"  max threads       {figures.max_threads_os:8d}     (bar: <= {MAX_THREADS}; "
        f"python threads {figures.max_threads_python}: {', '.join(figures.thread_names)})"
    )
    if figures.finished_before_wait > figures.runs // 10:
        print(
            "  warning: many runs ended before the wait began (slow submits?): "
            "the figures understate the cost; try a longer --sleep"
        )
    print(f"  {'PASS' if not misses else 'FAIL: ' + '; '.join(misses)}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="runs per case (200)")
    parser.add_argument("--sleep", type=float, default=2.0, help="seconds each run sleeps (2)")
    parser.add_argument(
        "--supervisor",
        choices=("auto", "c", "python"),
        default=None,
        help="sets TETHER_SUPERVISOR (default: leave the environment as is)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help="JSON results file")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.runs < 1 or args.sleep <= 0:
        parser.error("--runs must be at least 1 and --sleep positive")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run both cases; return the process exit status."""
    args = parse_args(argv)
    if args.child:
        return child_main()
    if args.supervisor is not None:
        os.environ["TETHER_SUPERVISOR"] = args.supervisor  # before tether is imported
    supervisor = os.environ.get("TETHER_SUPERVISOR", "auto")
    print(f"wait overhead: {args.runs} x sleep {args.sleep:g}, supervisor={supervisor}\n")

    # Beside where LocalConfig() puts run folders.
    scratch = Path(tempfile.mkdtemp(prefix="tether-bench-", dir=scratch_folder()))
    try:
        local = asyncio.run(in_process(scratch / "runs-1", args.runs, args.sleep))
        loaded = reattached(scratch / "runs-2", args.runs, args.sleep)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    cases = {"in_process": local, "reattached": loaded}
    misses = {name: figures.verdict(MAX_CPU_MS, MAX_THREADS) for name, figures in cases.items()}
    for name, figures in cases.items():
        show(name, figures, misses[name])
    passed = not any(misses.values())

    data: dict[str, Any] = {
        "runs": args.runs,
        "sleep": args.sleep,
        "supervisor": supervisor,
        "bars": {"max_cpu_ms": MAX_CPU_MS, "max_threads": MAX_THREADS},
        **{name: asdict(figures) for name, figures in cases.items()},
        "misses": misses,
        "passed": passed,
        "python": platform.python_version(),
        "machine": f"{platform.system()} {platform.release()} {platform.machine()}",
        "cpus": os.cpu_count() or 0,
    }
    print()
    missed = [] if passed else ["a wait-overhead bar was missed (see above)"]
    return finish(data, args.output, missed)


if __name__ == "__main__":
    sys.exit(main())
