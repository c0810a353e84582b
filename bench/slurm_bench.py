"""Status calls, submit latency and job arrays of the Slurm backend, on a real cluster.

Needs a Slurm cluster: ``sbatch``, ``squeue`` and ``scancel`` on PATH and a controller
that answers (``bash scripts/slurm-cluster.sh`` makes a one-node one on this
machine; ``nox -s services`` runs it). Three parts, in one event loop:

1. **Status calls.** S and L jobs (``--small`` 50, ``--large`` 200) of ``sleep 5``
   are submitted (``asyncio.gather`` of ``backend.submit``) and then all awaited at
   once. A counting wrapper, first on PATH, logs every ``squeue`` and ``sbatch``
   call of this process before it execs the real command (found with
   ``shutil.which`` before PATH is changed). The baseline is the small run of the
   same repeat: the cases alternate over R repeats (``--scale-repeats``, default
   2) and the medians are compared. With one ``squeue`` per poll for all tracked
   jobs, the calls follow the wall time, not the number of jobs; polling per job
   would multiply them by L/S (4). On this cluster (2 cores,
   ``OverSubscribe=FORCE:32``) 64 jobs run at once, so 200 jobs run in four waves
   and take three to four times as long as 50: the bar is therefore on the calls
   per second of wall time.
2. **Submit latency.** ``await backend.submit(Job(command="sleep 5"))`` (until it
   returns) against raw ``sbatch --parsable`` of the same batch script: the script
   tether wrote, copied untimed to a folder of its own (with the run folder's path
   changed to that folder, so the two jobs do not share a run folder), with the
   same options, ``--output=/dev/null``, through ``subprocess.run``. A third path,
   for information, runs the same raw sbatch through
   ``asyncio.create_subprocess_exec`` (tether's own way of running it). N of each
   (``--submits``, default 30), the order of the paths rotating from one submit to
   the next; medians. The wrappers are off PATH here. Every job is cancelled
   (``scancel`` of this bench's job ids only) at the end of the part.
3. **Ensemble.** E calls of ``operator.neg`` (``--ensemble``, default 200) as one
   job array (``backend.submit_array``) and as E separate ``backend.submit`` calls
   (``asyncio.gather``, at most ``max_submits`` sbatch at once): submit time and
   time until every value is back, for both. No bar.

It prints the load average and the filesystem's speed first, then the figures, and
writes them to ``bench/results/slurm_bench.json``. At the end it looks for jobs of
its own still in the queue, cancels them and counts them as a failure. Jobs of
other users or processes (a test suite on the same cluster) are never touched.

**Bars** (exit status 1 when one is missed, or when a run fails):

* status calls: the large run's median squeue calls ≤ ``--max-calls-ratio`` (1.5) x
  the small run's, **per second of wall time** (the raw ratio of calls is printed
  too, and says whether it meets the same figure);
* submit latency: tether / raw ``subprocess.run`` median ≤ ``--max-ratio`` (1.5);
  the output says whether it meets the aim of 1.2.

Usage::

    python bench/slurm_bench.py [--small 50] [--large 200] [--sleep 5]
                                [--scale-repeats 2] [--submits 30] [--ensemble 200]
                                [--max-calls-ratio 1.5] [--max-ratio 1.5] [--scratch DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import operator
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from _machine import finish, scratch_folder  # bench/ is the script's folder, first on sys.path

if TYPE_CHECKING:
    from tether.backends.slurm import SlurmBackend, SlurmRunHandle

RESULTS = Path(__file__).resolve().parent / "results" / "slurm_bench.json"
AIM_RATIO = 1.2
WRAPPED = ("squeue", "sbatch")
PATHS = ("raw", "raw-async", "tether")
#: Seconds to wait for cancelled jobs to leave the queue's active states.
DRAIN_WAIT = 90.0
#: Seconds the jobs of awaited runs get to leave the queue before they count as left behind.
LEFTOVER_WAIT = 20.0


@dataclass
class Report:
    """Everything the bench measured, as written to the JSON results file.

    Times are in seconds except the submit latencies (milliseconds).
    """

    small: int
    large: int
    sleep: float
    scale_repeats: int
    submits: int
    ensemble: int
    max_calls_ratio: float
    max_ratio: float
    aim_ratio: float
    scratch: str
    slurm: str = ""
    other_jobs_at_start: int = 0
    load_before: list[float] = field(default_factory=list)
    load_after: list[float] = field(default_factory=list)
    fs_folders_per_s: float = 0.0
    #: Part 1: one dict per (repeat, case), in the order run.
    scale: list[dict[str, Any]] = field(default_factory=list)
    scale_medians: dict[str, dict[str, float]] = field(default_factory=dict)
    calls_ratio: float = 0.0
    rate_ratio: float = 0.0
    #: Part 2: latencies in ms per path, and their medians.
    latency_ms: dict[str, list[float]] = field(default_factory=dict)
    latency_medians: dict[str, float] = field(default_factory=dict)
    latency_ratios: dict[str, float] = field(default_factory=dict)
    ratio: float = 0.0
    meets_aim: bool = False
    #: Part 3: one dict per mode ("array", "separate").
    ensemble_runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    job_ids: list[str] = field(default_factory=list)
    leftover_jobs: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    missed_bars: list[str] = field(default_factory=list)
    passed: bool = False
    python: str = platform.python_version()
    machine: str = f"{platform.system()} {platform.release()} {platform.machine()}"
    cpus: int = os.cpu_count() or 0


class Calls:
    """The counting wrappers: a folder of ``squeue``/``sbatch`` scripts that log each
    call's arguments, one line per call, then exec the real command."""

    def __init__(self, folder: Path, real: dict[str, str]) -> None:
        self.folder = folder
        folder.mkdir()
        self.logs = {name: folder / f"{name}.calls" for name in real}
        for name, path in real.items():
            self.logs[name].touch()
            wrapper = folder / name
            wrapper.write_text(
                "#!/bin/sh\n"
                f"printf '%s\\n' \"$*\" >> {shlex.quote(str(self.logs[name]))}\n"
                f'exec {shlex.quote(path)} "$@"\n'
            )
            wrapper.chmod(0o755)

    def lines(self, name: str) -> list[str]:
        return self.logs[name].read_text().splitlines()

    def mark(self) -> dict[str, int]:
        """How many calls of each command so far (pass to :meth:`since`)."""
        return {name: len(self.lines(name)) for name in self.logs}

    def since(self, mark: dict[str, int], name: str) -> list[str]:
        """The argument lines of ``name``'s calls since ``mark``."""
        return self.lines(name)[mark[name] :]


def ids_per_call(line: str) -> int:
    """How many job ids one logged squeue call asked about (its ``--jobs=`` list)."""
    for arg in line.split(" "):
        if arg.startswith("--jobs="):
            return len(arg.removeprefix("--jobs=").split(","))
    return 0


def folders_per_second(scratch: Path, count: int = 200) -> float:
    """How fast this filesystem creates run-folder-like trees (a folder + 4 files).

    Printed as context: every tether submit makes a run folder, a batch script and
    ``handle.json``; raw sbatch of a ready script makes none.
    """
    probe = scratch / "fs-probe"
    probe.mkdir()
    began = time.perf_counter()
    for i in range(count):
        folder = probe / str(i)
        folder.mkdir()
        for name in ("handle.json", "slurm.sbatch", "stdout", "exit.json"):
            (folder / name).touch()
    rate = count / (time.perf_counter() - began)
    shutil.rmtree(probe)
    return rate


def queue_active(squeue: str, ids: Iterable[str]) -> list[str]:
    """Those of ``ids`` (job ids, or array ids) the queue lists as pending or running."""
    wanted = sorted({job_id.split("_", 1)[0] for job_id in ids})
    active = []
    for start in range(0, len(wanted), 400):
        chunk = ",".join(wanted[start : start + 400])
        proc = subprocess.run(
            [squeue, "--noheader", "--array", f"--jobs={chunk}", "--format=%i %T"],
            capture_output=True,
            text=True,
            check=False,
        )
        for line in proc.stdout.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1] != "COMPLETING":  # ending: its node cleans up
                active.append(parts[0])
    return active


async def cancel_and_drain(scancel: str, squeue: str, ids: Iterable[str]) -> list[str]:
    """``scancel`` this bench's ``ids`` (only them); wait until none is active.

    Returns those still active after :data:`DRAIN_WAIT` seconds.
    """
    bases = sorted({job_id.split("_", 1)[0] for job_id in ids})
    for start in range(0, len(bases), 400):
        subprocess.run([scancel, *bases[start : start + 400]], capture_output=True, check=False)
    deadline = time.monotonic() + DRAIN_WAIT
    while (left := queue_active(squeue, bases)) and time.monotonic() < deadline:  # noqa: ASYNC110 (the controller's news)
        await asyncio.sleep(0.5)
    return left


# -- part 1: status calls ------------------------------------------------------------


async def scale_case(
    backend: SlurmBackend, jobs: int, sleep: float, calls: Calls, ours: list[str]
) -> dict[str, Any]:
    """Submit ``jobs`` runs of ``sleep``, await them all at once; what it cost."""
    import tether

    job = tether.Job(name=f"bench-scale{jobs}", command=f"sleep {sleep:g}")

    async def submit() -> SlurmRunHandle:
        handle = await backend.submit(job)
        ours.append(handle.job_id)
        return handle

    mark = calls.mark()
    began = time.perf_counter()
    handles = await asyncio.gather(*(submit() for _ in range(jobs)))
    submitted = time.perf_counter()
    results = await asyncio.gather(*(handle.wait() for handle in handles))
    ended = time.perf_counter()
    failed = [r for r in results if r.state is not tether.RunState.SUCCEEDED]
    squeues = calls.since(mark, "squeue")
    wall = ended - began
    return {
        "jobs": jobs,
        "submit_s": submitted - began,
        "track_s": ended - submitted,
        "wall_s": wall,
        "squeue_calls": len(squeues),
        "squeue_per_s": len(squeues) / wall,
        "sbatch_calls": len(calls.since(mark, "sbatch")),
        "max_ids_per_squeue": max((ids_per_call(line) for line in squeues), default=0),
        "failed": [f"{r.run_id}: {r.state.value} {r.error}" for r in failed],
    }


async def part_scale(report: Report, backend: SlurmBackend, calls: Calls, ours: list[str]) -> None:
    print(
        f"status calls: {report.small} and {report.large} x sleep {report.sleep:g}, "
        f"{report.scale_repeats} repeats",
        flush=True,
    )
    for i in range(report.scale_repeats):
        order = (report.small, report.large) if i % 2 == 0 else (report.large, report.small)
        for jobs in order:
            case = await scale_case(backend, jobs, report.sleep, calls, ours)
            case["repeat"] = i + 1
            report.scale.append(case)
            report.failures += case["failed"]
            print(
                f"  repeat {i + 1}: {jobs:4} jobs: submit {case['submit_s']:5.1f} s, tracked "
                f"{case['track_s']:5.1f} s, {case['squeue_calls']:3} squeue calls "
                f"({case['squeue_per_s']:.2f}/s, up to {case['max_ids_per_squeue']} ids "
                f"per call), {case['sbatch_calls']} sbatch",
                flush=True,
            )
    for label, jobs in (("small", report.small), ("large", report.large)):
        cases = [c for c in report.scale if c["jobs"] == jobs]
        report.scale_medians[label] = {
            key: statistics.median(c[key] for c in cases)
            for key in ("submit_s", "track_s", "wall_s", "squeue_calls", "squeue_per_s")
        }
    small, large = report.scale_medians["small"], report.scale_medians["large"]
    report.calls_ratio = large["squeue_calls"] / max(1.0, small["squeue_calls"])
    report.rate_ratio = large["squeue_per_s"] / small["squeue_per_s"]


# -- part 2: submit latency ------------------------------------------------------------


def raw_copy(handle: SlurmRunHandle, folder: Path) -> list[str]:
    """A copy of ``handle``'s batch script in ``folder`` (its run folder's path changed
    to ``folder``), and the sbatch argv that submits it as tether did."""
    script = handle.run_dir / "slurm.sbatch"
    text = script.read_text()
    options_line = next(line for line in text.splitlines() if "sbatch --parsable" in line)
    options = options_line.split("sbatch --parsable", 1)[1].replace("<this script>", "")
    folder.mkdir()
    copy = folder / "slurm.sbatch"
    copy.write_text(text.replace(str(handle.run_dir), str(folder)))
    copy.chmod(0o700)
    own = [f"--job-name={folder.name}", "--output=/dev/null", f"--chdir={folder}"]
    return ["sbatch", "--parsable", *own, *shlex.split(options), str(copy)]


def job_id_of(out: bytes | str, err: bytes | str, code: int) -> str:
    text = out.decode() if isinstance(out, bytes) else out
    job_id = text.strip().split(";")[0]
    if code != 0 or not job_id.isdigit():
        said = err.decode() if isinstance(err, bytes) else err
        raise RuntimeError(f"raw sbatch failed ({code}): {said.strip() or text.strip()}")
    return job_id


async def part_latency(
    report: Report, backend: SlurmBackend, scratch: Path, ours: list[str]
) -> None:
    import tether

    print(f"submit latency: {report.submits} submits of each path, rotated", flush=True)
    job = tether.Job(name="bench-latency", command=f"sleep {report.sleep:g}")
    raw_root = scratch / "raw"
    raw_root.mkdir()
    mine: list[str] = []
    last: list[SlurmRunHandle] = []
    copies = iter(range(10**6))

    async def tether_once() -> float:
        began = time.perf_counter()
        handle = await backend.submit(job)
        took = (time.perf_counter() - began) * 1000
        mine.append(handle.job_id)
        last.append(handle)
        return took

    async def raw_once() -> float:
        argv = raw_copy(last[-1], raw_root / f"raw-{next(copies)}")
        began = time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, check=False)
        took = (time.perf_counter() - began) * 1000
        mine.append(job_id_of(proc.stdout, proc.stderr, proc.returncode))
        return took

    async def raw_async_once() -> float:
        argv = raw_copy(last[-1], raw_root / f"raw-{next(copies)}")
        began = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await proc.communicate()
        took = (time.perf_counter() - began) * 1000
        mine.append(job_id_of(out, err, proc.returncode or 0))
        return took

    ones: dict[str, Callable[[], Awaitable[float]]] = {
        "raw": raw_once,
        "raw-async": raw_async_once,
        "tether": tether_once,
    }
    try:
        for path in ("tether", "raw", "raw-async"):  # warm-up; tether first: raw copies its script
            await ones[path]()
        report.latency_ms = {path: [] for path in PATHS}
        for i in range(report.submits):
            order = PATHS[i % 3 :] + PATHS[: i % 3]
            for path in order:
                report.latency_ms[path].append(await ones[path]())
    finally:
        ours += mine
        real = {name: shutil.which(name) or name for name in ("scancel", "squeue")}
        left = await cancel_and_drain(real["scancel"], real["squeue"], mine)
        if left:
            report.failures.append(f"submit-latency jobs still active after scancel: {left}")
    report.latency_medians = {p: statistics.median(v) for p, v in report.latency_ms.items()}
    med = report.latency_medians
    report.latency_ratios = {
        "tether/raw": med["tether"] / med["raw"],
        "tether/raw-async": med["tether"] / med["raw-async"],
        "raw-async/raw": med["raw-async"] / med["raw"],
    }
    report.ratio = report.latency_ratios["tether/raw"]
    report.meets_aim = report.ratio <= report.aim_ratio
    for path in PATHS:
        values = sorted(report.latency_ms[path])
        print(
            f"  {path:9} median {med[path]:6.1f} ms   min {values[0]:6.1f}   max {values[-1]:6.1f}",
            flush=True,
        )


# -- part 3: ensemble ------------------------------------------------------------------


async def part_ensemble(
    report: Report, backend: SlurmBackend, calls: Calls, ours: list[str]
) -> None:
    import tether

    n = report.ensemble
    print(f"ensemble: {n} calls of operator.neg, as one array and as {n} submits", flush=True)

    async def submit(call: tether.Call) -> SlurmRunHandle:
        handle = await backend.submit(call)
        ours.append(handle.job_id)
        return handle

    for mode in ("array", "separate"):
        todo = [tether.Call(operator.neg, i) for i in range(n)]
        mark = calls.mark()
        began = time.perf_counter()
        if mode == "array":
            handles = await backend.submit_array(todo)
            ours += [h.job_id for h in handles]  # type: ignore[attr-defined]
        else:
            handles = list(await asyncio.gather(*(submit(c) for c in todo)))
        submitted = time.perf_counter()
        results = await asyncio.gather(*(h.wait() for h in handles))
        ended = time.perf_counter()
        wrong = [
            f"{r.run_id}: {r.state.value} {r.error} value={r.value!r}"
            for i, r in enumerate(results)
            if r.state is not tether.RunState.SUCCEEDED or r.value != -i
        ]
        report.failures += wrong
        run = {
            "submit_s": submitted - began,
            "all_done_s": ended - began,
            "squeue_calls": len(calls.since(mark, "squeue")),
            "sbatch_calls": len(calls.since(mark, "sbatch")),
            "wrong": len(wrong),
        }
        report.ensemble_runs[mode] = run
        print(
            f"  {mode:8}: submit {run['submit_s']:6.2f} s, all done {run['all_done_s']:6.1f} s, "
            f"{run['sbatch_calls']} sbatch, {run['squeue_calls']} squeue calls"
            + (f", {len(wrong)} WRONG" if wrong else ""),
            flush=True,
        )


# -- the whole bench --------------------------------------------------------------------


async def bench(report: Report, scratch: Path) -> None:
    """The three parts, with the wrappers first on PATH for parts 1 and 3."""
    import tether

    real = {name: shutil.which(name) for name in (*WRAPPED, "scancel")}
    missing = [name for name, path in real.items() if path is None]
    if missing:
        raise RuntimeError(f"not on PATH: {', '.join(missing)}")
    calls = Calls(scratch / "wrappers", {name: str(real[name]) for name in WRAPPED})
    plain_path = os.environ.get("PATH", "")
    wrapped_path = f"{calls.folder}{os.pathsep}{plain_path}"
    backend = tether.SlurmConfig(runs_dir=scratch / "runs", cancel_grace=2).create()
    ours: list[str] = []
    try:
        os.environ["PATH"] = wrapped_path
        await part_scale(report, backend, calls, ours)
        os.environ["PATH"] = plain_path  # raw sbatch has no wrapper: neither may tether's
        await part_latency(report, backend, scratch, ours)
        os.environ["PATH"] = wrapped_path
        await part_ensemble(report, backend, calls, ours)
    finally:
        os.environ["PATH"] = plain_path
        report.job_ids = ours
        # A run whose outcome is recorded may still be listed for a moment (its
        # supervisor exiting); only jobs still there after LEFTOVER_WAIT are leftovers.
        deadline = time.monotonic() + LEFTOVER_WAIT
        while (active := queue_active(str(real["squeue"]), ours)) and (  # noqa: ASYNC110
            time.monotonic() < deadline
        ):
            await asyncio.sleep(0.5)
        if active:
            report.leftover_jobs = active
            await cancel_and_drain(str(real["scancel"]), str(real["squeue"]), active)


def print_summary(report: Report) -> None:
    small, large = report.scale_medians["small"], report.scale_medians["large"]
    print(f"\nstatus calls (medians of {report.scale_repeats}):")
    print(f"{'jobs':>6}{'submit s':>10}{'tracked s':>11}{'wall s':>8}{'squeue':>8}{'per s':>7}")
    for jobs, med in ((report.small, small), (report.large, large)):
        print(
            f"{jobs:6}{med['submit_s']:10.1f}{med['track_s']:11.1f}{med['wall_s']:8.1f}"
            f"{med['squeue_calls']:8.0f}{med['squeue_per_s']:7.2f}"
        )
    raw_ok = "meets" if report.calls_ratio <= report.max_calls_ratio else "misses"
    print(
        f"squeue calls {report.large}/{report.small}: {report.calls_ratio:.2f} "
        f"({raw_ok} {report.max_calls_ratio} unnormalised; the jobs' ratio is "
        f"{report.large / report.small:.1f}); per second of wall time: "
        f"{report.rate_ratio:.2f} (bar: <= {report.max_calls_ratio})"
    )
    med = report.latency_medians
    print(f"\nsubmit latency (medians of {report.submits}, ms):")
    print("   ".join(f"{path} {med[path]:.1f}" for path in PATHS))
    print("   ".join(f"{name} {value:.3f}" for name, value in report.latency_ratios.items()))
    aim = "meets" if report.meets_aim else "misses"
    print(
        f"tether/raw: {report.ratio:.3f}  (bar: <= {report.max_ratio}; {aim} the aim of "
        f"<= {report.aim_ratio})"
    )
    print(f"\nensemble of {report.ensemble} calls:")
    for mode, run in report.ensemble_runs.items():
        print(f"  {mode:8}: submit {run['submit_s']:6.2f} s, all done {run['all_done_s']:6.1f} s")
    print(f"\nload average before {report.load_before}, after {report.load_after}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=50, help="jobs of the small run (50)")
    parser.add_argument("--large", type=int, default=200, help="jobs of the large run (200)")
    parser.add_argument("--sleep", type=float, default=5.0, help="seconds each job sleeps (5)")
    parser.add_argument(
        "--scale-repeats", type=int, default=2, help="(small, large) pairs, alternating (2)"
    )
    parser.add_argument("--submits", type=int, default=30, help="timed submits per path (30)")
    parser.add_argument("--ensemble", type=int, default=200, help="calls in the ensemble (200)")
    parser.add_argument(
        "--max-calls-ratio",
        type=float,
        default=1.5,
        help="fail when the large run's squeue calls per second / the small run's is "
        "above this (1.5)",
    )
    parser.add_argument(
        "--max-ratio",
        type=float,
        default=1.5,
        help="fail when tether's median submit latency / raw sbatch's is above this (1.5)",
    )
    parser.add_argument(
        "--scratch",
        type=Path,
        default=None,
        help="folder for the temporary run folders, seen by the nodes (default: tether's "
        "state folder, where users' runs go)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help="JSON results file")
    args = parser.parse_args(argv)
    if min(args.small, args.large, args.scale_repeats, args.submits) < 1 or args.ensemble < 2:
        parser.error("the counts must be at least 1 (--ensemble at least 2)")
    return args


def slurm_version() -> str | None:
    """``sinfo --version``, or None when the controller does not answer."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return None
    proc = subprocess.run(["sinfo", "-h", "-o", "%a"], capture_output=True, check=False)
    if proc.returncode != 0:
        return None
    version = subprocess.run(["sinfo", "--version"], capture_output=True, text=True, check=False)
    return version.stdout.strip()


def main(argv: list[str] | None = None) -> int:
    """Run the bench; return the process exit status."""
    args = parse_args(argv)
    version = slurm_version()
    if version is None:
        print(
            "FAIL: no Slurm controller answers (sinfo); run `bash scripts/slurm-cluster.sh`",
            file=sys.stderr,
        )
        return 1
    args.scratch = scratch_folder(args.scratch)
    report = Report(
        small=args.small,
        large=args.large,
        sleep=args.sleep,
        scale_repeats=args.scale_repeats,
        submits=args.submits,
        ensemble=args.ensemble,
        max_calls_ratio=args.max_calls_ratio,
        max_ratio=args.max_ratio,
        aim_ratio=AIM_RATIO,
        scratch=str(args.scratch),
        slurm=version,
    )
    queue = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True)
    report.other_jobs_at_start = len(queue.stdout.split())
    report.load_before = [round(x, 2) for x in os.getloadavg()]
    print(
        f"slurm bench ({version}): status calls, submit latency and arrays; run folders "
        f"in {report.scratch}"
    )
    print(
        f"  load average {report.load_before}; {report.other_jobs_at_start} other job(s) "
        "in the queue"
    )
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tether-bench-", dir=args.scratch) as scratch:
        report.fs_folders_per_s = folders_per_second(Path(scratch))
        print(f"  filesystem: {report.fs_folders_per_s:,.0f} run-folder trees/s in {scratch}")
        try:
            asyncio.run(bench(report, Path(scratch)))
        except Exception as exc:  # still write what was measured, and fail
            report.failures.append(f"{type(exc).__name__}: {exc}")
            print(f"FAIL: {type(exc).__name__}: {exc}", file=sys.stderr)
    report.load_after = [round(x, 2) for x in os.getloadavg()]
    if report.scale_medians and report.latency_medians:
        print_summary(report)
    print(f"whole bench: {time.perf_counter() - began:.0f} s")

    if report.scale_medians and report.rate_ratio > report.max_calls_ratio:
        report.missed_bars.append(
            f"squeue calls per second, {report.large} vs {report.small} jobs: "
            f"{report.rate_ratio:.2f} > {report.max_calls_ratio}"
        )
    if report.latency_medians and report.ratio > report.max_ratio:
        med = report.latency_medians
        report.missed_bars.append(
            f"submit latency tether/raw {report.ratio:.3f} > {report.max_ratio} "
            f"({med['tether']:.1f} vs {med['raw']:.1f} ms)"
        )
    if report.leftover_jobs:
        report.missed_bars.append(
            f"{len(report.leftover_jobs)} job(s) of this bench left in the queue (now "
            f"cancelled): {', '.join(report.leftover_jobs[:10])}"
        )
    if report.failures:
        report.missed_bars.append(f"{len(report.failures)} failure(s), first: {report.failures[0]}")
    report.passed = not report.missed_bars
    return finish(asdict(report), args.output, report.missed_bars)


if __name__ == "__main__":
    sys.exit(main())
