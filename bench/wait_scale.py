"""Awaiting 10,000 local runs at once under ``ulimit -n 1024``: what each waiting handle costs.

Every run blocks on a shared lock (``flock -s GATE true``) that the bench holds, so
all of them are still going when the waits begin. A waiting process, started with
its open-file limit (soft and hard) at ``--limit``, awaits them all at once and
reports, from the moment its waits begin until the last one returns:

- **CPU** of the waiting process itself (user + system, ``getrusage``), per handle;
- **memory**: the growth of its resident set from before it made the handles to
  the peak while waiting, per handle (the handles, their jobs and the waits);
- **threads**: the most OS threads it had while waiting.

Three cases, in one run: ``--baseline`` runs (1,000) and ``--runs`` runs (10,000)
submitted by the waiting process itself, and ``--runs`` runs re-attached: another
process submits them, the waiting one loads their records. The ratio of the
per-handle CPU at ``--runs`` to the one at ``--baseline`` shows whether the cost
stays flat.

Bars (each case): ≤ 0.5 ms CPU and ≤ 20 KiB per handle, ≤ 4 threads, every run
SUCCEEDED; and a CPU ratio ≤ 1.5. Results go to ``results/wait_scale.json``.

    python bench/wait_scale.py [--runs 10000] [--baseline 1000] [--limit 1024]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from _machine import (  # bench/ is the script's folder, first on sys.path
    finish,
    print_machine,
    scratch_folder,
)

RESULTS = Path(__file__).resolve().parent / "results" / "wait_scale.json"

#: The waiting process (shared with tests/test_wait_scale.py), and how long it lets its
#: waits settle before it reads its figures and the lock is let go.
WAITER = Path(__file__).resolve().parent / "_waiter.py"
SETTLE_S = 0.5


def waiter(limit: int, count: int, runs_dir: Path, mode: str) -> subprocess.Popen[str]:
    """Start the waiting process."""
    return subprocess.Popen(
        [sys.executable, str(WAITER), str(limit), str(count), str(runs_dir), mode, str(SETTLE_S)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def in_process(limit: int, count: int, runs_dir: Path) -> dict[str, Any]:
    """The waiting process submits the runs itself."""
    proc = waiter(limit, count, runs_dir, "submit")
    out, _ = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"the waiting process failed ({proc.returncode})")
    return dict(json.loads(out.splitlines()[-1]))


def reattached(limit: int, count: int, runs_dir: Path) -> dict[str, Any]:
    """This process submits the runs; a fresh one loads their records and waits."""
    import asyncio
    import fcntl

    from tether import Job, LocalConfig

    gate = runs_dir / "gate"
    with gate.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)

        async def submit_all() -> None:
            backend = LocalConfig(runs_dir=runs_dir, capture_output=False).create()
            job = Job(command=["flock", "-s", str(gate), "true"])
            for _ in range(count):
                await backend.submit(job)

        asyncio.run(submit_all())
        proc = waiter(limit, count, runs_dir, "attach")
        assert proc.stdout is not None and proc.stdin is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the waiting process did not get ready")
        fcntl.flock(lock, fcntl.LOCK_UN)
    out, _ = proc.communicate("go\n")
    if proc.returncode != 0:
        raise RuntimeError(f"the waiting process failed ({proc.returncode})")
    return dict(json.loads(out.splitlines()[-1]))


def main() -> int:
    """Run the three cases; print the figures; exit 1 when a bar is missed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--baseline", type=int, default=1_000)
    parser.add_argument("--limit", type=int, default=1024, help="open files (soft and hard)")
    parser.add_argument("--max-cpu-ms", type=float, default=0.5)
    parser.add_argument("--max-kib", type=float, default=20.0)
    parser.add_argument("--max-threads", type=int, default=4)
    parser.add_argument("--max-ratio", type=float, default=1.5)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    home = scratch_folder()
    facts = print_machine(home)
    print(
        f"wait scale: {args.baseline:,} and {args.runs:,} runs awaited at once under "
        f"ulimit -n {args.limit}",
        flush=True,
    )
    cases: dict[str, dict[str, Any]] = {}
    for name, count, run in (
        (f"in-process {args.baseline:,}", args.baseline, in_process),
        (f"in-process {args.runs:,}", args.runs, in_process),
        (f"re-attached {args.runs:,}", args.runs, reattached),
    ):
        with tempfile.TemporaryDirectory(prefix="tether-bench-", dir=home) as scratch:
            figures = run(args.limit, count, Path(scratch))
        cases[name] = figures
        print(
            f"  {name:22} CPU {figures['cpu_ms_per_handle']:.3f} ms/handle   memory "
            f"{figures['kib_per_handle']:.1f} KiB/handle   threads {figures['threads']}   "
            f"{figures['succeeded']:,}/{figures['runs']:,} SUCCEEDED ({figures['early']} "
            "ended early)",
            flush=True,
        )
    base = cases[f"in-process {args.baseline:,}"]["cpu_ms_per_handle"]
    ratio = cases[f"in-process {args.runs:,}"]["cpu_ms_per_handle"] / base
    print(f"CPU per handle, {args.runs:,} / {args.baseline:,} runs: {ratio:.2f} (bar <= 1.5)")
    missed = [
        f"{name}: {why}"
        for name, f in cases.items()
        for why, bad in (
            (
                f"{f['cpu_ms_per_handle']:.3f} ms CPU per handle",
                f["cpu_ms_per_handle"] > args.max_cpu_ms,
            ),
            (f"{f['kib_per_handle']:.1f} KiB per handle", f["kib_per_handle"] > args.max_kib),
            (f"{f['threads']} threads", f["threads"] > args.max_threads),
            (f"{f['runs'] - f['succeeded']} runs not SUCCEEDED", f["succeeded"] != f["runs"]),
        )
        if bad
    ]
    if ratio > args.max_ratio:
        missed.append(f"CPU ratio {ratio:.2f} > {args.max_ratio}")
    data = {"machine": facts, "cases": cases, "ratio": ratio, "missed": missed}
    return finish(data, args.output, missed)


if __name__ == "__main__":
    sys.exit(main())
