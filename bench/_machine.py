"""What the machine was doing when a benchmark ran: load, CPUs and filesystem speed.

Every benchmark prints this first, so that a figure from a loaded machine or a slow
disk can be recognised as such.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

PROBE_FILES = 200


def fs_files_per_second(directory: Path, count: int = PROBE_FILES) -> float:
    """Small files per second that ``directory``'s filesystem can create, fsync and rename."""
    probe = Path(tempfile.mkdtemp(prefix=".fs-probe-", dir=directory))
    try:
        start = time.perf_counter()
        for i in range(count):
            tmp = probe / f".{i}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, b'{"probe": true}\n')
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, probe / f"{i}.json")
        elapsed = time.perf_counter() - start
    finally:
        shutil.rmtree(probe, ignore_errors=True)
    return count / elapsed if elapsed > 0 else float("inf")


def print_machine(directory: Path) -> dict[str, float]:
    """Print the load average, CPU count and filesystem speed; return them.

    The filesystem probe creates, fsyncs and renames 200 small files in
    ``directory`` (which must exist), then removes them.
    """
    load1, load5, load15 = os.getloadavg()
    cpus = float(os.cpu_count() or 1)
    files = fs_files_per_second(Path(directory))
    print(f"machine: load average {load1:.2f} {load5:.2f} {load15:.2f} on {cpus:.0f} CPUs")
    print(f"filesystem of {directory}: {files:,.0f} files/s (create + fsync + rename)")
    return {
        "load1": load1,
        "load5": load5,
        "load15": load15,
        "cpus": cpus,
        "fs_files_per_s": files,
    }
