"""A real Dask scheduler and two workers on 127.0.0.1, started once per test session.

The scheduler picks a free port (``--port 0``) and writes its address to a
scheduler file; the workers find it there. Everything runs in sessions of its
own and is stopped (TERM, then KILL) when the session ends. ``dask_service``
also puts the address in ``TETHER_TEST_DASK_ADDRESS`` for the contract harness.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .services import missing

ADDRESS_VARIABLE = "TETHER_TEST_DASK_ADDRESS"
WORKERS = 2
THREADS = 6


def _start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", *args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        with contextlib.suppress(ProcessLookupError):  # what the worker's runs left behind
            os.killpg(proc.pid, signal.SIGKILL)


def start_scheduler(where: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A scheduler on a free loopback port (its log in ``where``), and its address."""
    scheduler_file = where / "scheduler.json"
    proc = _start(
        [
            "distributed.cli.dask_scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--no-dashboard",
            "--scheduler-file",
            str(scheduler_file),
        ],
        where / "scheduler.log",
    )
    deadline = time.monotonic() + 60
    while not scheduler_file.exists() and time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    if not scheduler_file.exists():
        _stop([proc])
        pytest.fail(f"dask scheduler did not start: {(where / 'scheduler.log').read_text()}")
    return proc, json.loads(scheduler_file.read_text())["address"]


@pytest.fixture(scope="session")
def dask_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The address of a real scheduler with two worker processes."""
    pytest.importorskip("distributed")
    where = tmp_path_factory.mktemp("dask")
    scheduler, address = start_scheduler(where)
    procs = [scheduler]
    try:
        for index in range(WORKERS):
            procs.append(
                _start(
                    [
                        "distributed.cli.dask_worker",
                        address,
                        "--host",
                        "127.0.0.1",
                        "--nthreads",
                        str(THREADS),
                        "--no-nanny",
                        "--no-dashboard",
                        "--name",
                        f"tether-test-{index}",
                    ],
                    where / f"worker-{index}.log",
                )
            )
        await_workers(address, WORKERS)
        yield address
    finally:
        _stop(procs[1:])
        _stop(procs[:1])


def await_workers(address: str, count: int) -> None:
    code = (
        "import sys; from distributed import Client\n"
        "with Client(sys.argv[1], timeout=30) as c: c.wait_for_workers(int(sys.argv[2]), 60)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, address, str(count)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        missing(f"dask workers did not join {address}: {done.stderr[-2000:]}")


def start_worker(
    address: str, log: Path, *, resources: str, threads: int = 1
) -> subprocess.Popen[bytes]:
    """One more worker (no nanny) with ``resources`` ("NAME=1"), for a test of its own."""
    return _start(
        [
            "distributed.cli.dask_worker",
            address,
            "--host",
            "127.0.0.1",
            "--nthreads",
            str(threads),
            "--no-nanny",
            "--no-dashboard",
            "--resources",
            resources,
        ],
        log,
    )


def start_process(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    """``python -m ARGS`` in a session of its own, its output in ``log``."""
    return _start(args, log)


def stop_processes(procs: list[subprocess.Popen[bytes]]) -> None:
    """Stop processes ``_start`` or ``start_worker`` started (TERM, then KILL)."""
    _stop(procs)


@pytest.fixture
def dask_service(dask_cluster: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The session's scheduler address, also in ``TETHER_TEST_DASK_ADDRESS``."""
    monkeypatch.setenv(ADDRESS_VARIABLE, dask_cluster)
    return dask_cluster


def release_run(address: str, run_id: str) -> None:
    """Make the scheduler forget a run, as a restart would: unpublish and cancel its task."""
    code = (
        "import sys; from distributed import Client, Future\n"
        "with Client(sys.argv[1], timeout=30) as c:\n"
        "    c.unpublish_dataset(sys.argv[2])\n"
        "    c.cancel([Future(sys.argv[2], c)], force=True)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, address, run_id],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
