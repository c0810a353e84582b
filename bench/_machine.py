"""What every bench prints first: the machine's load and how fast its filesystem is.

A figure measured on a busy machine or a slow disk is not a regression: these two
lines, printed before any timing, let a reader tell a noisy run from a real change.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

#: Files the filesystem probe creates, syncs and renames.
PROBE_FILES = 200


def fs_files_per_s(directory: Path, count: int = PROBE_FILES) -> float:
    """Small files per second that ``directory`` takes: create, write, fsync, rename."""
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tether-fs-probe-", dir=directory) as scratch:
        began = time.perf_counter()
        for i in range(count):
            tmp = os.path.join(scratch, f".{i}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, b"x" * 256)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, os.path.join(scratch, f"{i}.json"))
        return count / (time.perf_counter() - began)


def print_machine(directory: Path) -> dict[str, float]:
    """Print (and return) the load average, the CPU count and ``directory``'s speed."""
    one, five, fifteen = os.getloadavg()
    facts = {
        "load_1m": round(one, 2),
        "load_5m": round(five, 2),
        "load_15m": round(fifteen, 2),
        "cpus": float(os.cpu_count() or 0),
        "fs_files_per_s": round(fs_files_per_s(directory), 1),
    }
    print(
        f"machine: load average {facts['load_1m']:.2f} {facts['load_5m']:.2f} "
        f"{facts['load_15m']:.2f} on {int(facts['cpus'])} CPUs; filesystem "
        f"{facts['fs_files_per_s']:,.0f} synced small files/s in {directory}",
        flush=True,
    )
    return facts
