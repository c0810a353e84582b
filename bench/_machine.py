"""What every benchmark shares: the folder it works in, what the machine was doing
when it ran (load, CPUs and filesystem speed), and how it ends (its results written,
PASS or FAIL, the exit status).

Every benchmark prints the machine first, so that a figure from a loaded machine or a
slow disk can be recognised as such.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

PROBE_FILES = 200


def scratch_folder(path: Path | None = None) -> Path:
    """``path``, else tether's state folder (where users' runs go by default); made if missing."""
    if path is None:
        from tether._files import state_home  # not before: a bench may set TETHER_* first

        path = state_home()
    path.mkdir(parents=True, exist_ok=True)
    return path


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


def finish(data: Mapping[str, Any], output: Path, missed: Sequence[str]) -> int:
    """Write ``data`` to ``output`` as indented JSON, then print PASS or FAIL.

    FAIL goes to stderr with the ``missed`` bars, joined by "; ". Returns the exit
    status: 0 when no bar was missed, else 1.
    """
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(data, indent=2) + "\n")
    print(f"results written to {output}", flush=True)
    if missed:
        print(f"FAIL: {'; '.join(missed)}.", file=sys.stderr)
        return 1
    print("PASS")
    return 0
