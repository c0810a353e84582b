"""The waiting process of ``wait_scale.py`` and ``tests/test_wait_scale.py``: awaits many runs.

    python bench/_waiter.py LIMIT COUNT RUNS_DIR MODE SETTLE

It sets its open-file limit (soft and hard) to LIMIT before it imports tether. In
MODE ``submit`` it holds an exclusive lock on RUNS_DIR/gate, submits COUNT local
runs that each take that lock shared (``flock -s gate true``), awaits them all, and
lets the lock go after SETTLE seconds. In MODE ``attach`` another process has
submitted the runs and holds the lock: this one loads their records from RUNS_DIR,
awaits them, prints ``ready`` after SETTLE seconds and reads a line from stdin (the
other side lets the lock go, then writes it).

Its last line on stdout is one JSON object, taken from the moment its waits begin:

- ``runs``, ``succeeded``, ``states``: how many waits returned, how many SUCCEEDED,
  and the states seen;
- ``early``: runs that ended before the lock was let go (0: each was still going);
- ``cpu_ms_per_handle``: its own CPU (user + system) until the last wait returned;
- ``kib_per_handle``: its resident set's growth from before it made the handles to
  the peak while waiting; ``threads``: the most OS threads it had meanwhile;
- ``pidfds``, ``budget``, ``shared``, ``fds``: once every wait is in, the pidfds the
  waits hold and the most they may, the waits sharing the inotify descriptor, and
  its open files; ``left``: waits still sharing it at the end (0: all let go).
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import resource
import sys
from pathlib import Path
from typing import Any


def status(field: str) -> int:
    """A number from ``/proc/self/status`` (``VmRSS`` in KiB, ``Threads``)."""
    with open("/proc/self/status") as lines:
        for line in lines:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise LookupError(field)


def cpu() -> float:
    """Seconds of CPU this process has used (user + system)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def main(count: int, runs_dir: Path, mode: str, settle: float) -> dict[str, Any]:
    import tether
    from tether import Job, LocalConfig
    from tether._exitwait import overflow_waiters, pidfd_budget

    gate = runs_dir / "gate"
    rss_before = status("VmRSS")
    if mode == "submit":
        lock = open(gate, "w")  # noqa: SIM115 (let go half-way, not at a block's end)
        fcntl.flock(lock, fcntl.LOCK_EX)
        backend = LocalConfig(runs_dir=runs_dir, capture_output=False).create()
        job = Job(command=["flock", "-s", str(gate), "true"])
        handles = [await backend.submit(job) for _ in range(count)]
    else:
        records = sorted(runs_dir.glob("*/handle.json"))
        handles = [await tether.load_handle(path) for path in records]
    peak = {"threads": 0, "rss": 0}
    sampling = True

    async def sample() -> None:
        while sampling:
            peak["threads"] = max(peak["threads"], status("Threads"))
            peak["rss"] = max(peak["rss"], status("VmRSS"))
            await asyncio.sleep(0.1)

    sampler = asyncio.ensure_future(sample())
    began = cpu()
    waits = [asyncio.ensure_future(handle.wait()) for handle in handles]
    await asyncio.sleep(settle)
    early = sum(wait.done() for wait in waits)
    # Every wait is in: those past the pidfd budget share the inotify descriptor.
    used, budget = pidfd_budget()
    shared = overflow_waiters()
    fds = len(os.listdir("/proc/self/fd"))
    if mode == "submit":
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()
    else:
        print("ready", flush=True)
        sys.stdin.readline()  # the other side lets the lock go
    results = await asyncio.gather(*waits)
    spent = cpu() - began
    sampling = False
    await sampler
    return {
        "runs": len(results),
        "early": early,
        "succeeded": sum(r.state.value == "SUCCEEDED" for r in results),
        "states": sorted({r.state.value for r in results}),
        "cpu_ms_per_handle": spent * 1e3 / count,
        "kib_per_handle": (peak["rss"] - rss_before) / count,
        "threads": peak["threads"],
        "pidfds": used,
        "budget": budget,
        "shared": shared,
        "fds": fds,
        "left": overflow_waiters(),
    }


if __name__ == "__main__":
    limit, number, folder, how, wait_s = sys.argv[1:6]
    resource.setrlimit(resource.RLIMIT_NOFILE, (int(limit), int(limit)))  # before tether
    print(json.dumps(asyncio.run(main(int(number), Path(folder), how, float(wait_s)))))
