"""What a benchmark prints first: the machine's load and its filesystem's speed.

A figure measured while other work runs, or on a slow disk, is not the code's
fault; printing both first lets a reader recognise a noisy run. Shared by the
benches (``from _machine import print_machine``; the bench folder is on
``sys.path`` when a bench runs as a script).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

#: Small files the filesystem probe creates, fsyncs and renames.
PROBE_FILES = 200


def fs_probe(directory: Path, files: int = PROBE_FILES) -> float:
    """Files per second that ``directory``'s filesystem creates, fsyncs and renames.

    Each file is what a crash-safe record write does: create a temp file, write a
    few bytes, ``fsync``, rename it into place. The probe folder is removed after.
    """
    directory.mkdir(parents=True, exist_ok=True)
    probe = Path(tempfile.mkdtemp(prefix="fs-probe-", dir=directory))
    try:
        t0 = time.perf_counter()
        for i in range(files):
            tmp = probe / f".{i}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, b'{"probe": %d}\n' % i)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, probe / f"{i}.json")
        elapsed = time.perf_counter() - t0
    finally:
        shutil.rmtree(probe, ignore_errors=True)
    return files / elapsed if elapsed > 0 else float("inf")


def print_machine(directory: Path) -> dict[str, float]:
    """Print (and return) the load average, the CPU count and ``directory``'s fs speed.

    Keys: ``load1``, ``load5``, ``load15`` (os.getloadavg), ``cpus``, and
    ``fs_files_per_s`` (:func:`fs_probe` in ``directory``).
    """
    load1, load5, load15 = os.getloadavg()
    cpus = float(os.cpu_count() or 0)
    speed = fs_probe(directory)
    print(
        f"machine: load average {load1:.2f} {load5:.2f} {load15:.2f} on {cpus:.0f} CPUs; "
        f"filesystem: {speed:,.0f} files/s (create + fsync + rename, {PROBE_FILES} files "
        f"in {directory})",
        flush=True,
    )
    return {
        "load1": load1,
        "load5": load5,
        "load15": load15,
        "cpus": cpus,
        "fs_files_per_s": speed,
    }
