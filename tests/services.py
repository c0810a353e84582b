"""Real services the tests need, and what to do when one is missing.

On a laptop without the service, its tests skip with a one-line reason. In CI
(``CI`` set, as ``.ci/run`` and the ``ci`` nox session do) a missing service
fails the run instead: CI must never pass by skipping.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

DOCKER_SOCKET = "/var/run/docker.sock"
IMPORTED_IMAGE = "tether-test/busybox:import"
BUILT_IMAGE = "tether-test/busybox:build"
START = "bash scripts/docker-engine.sh"


def in_ci() -> bool:
    """True when a missing service must fail the run rather than skip."""
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def missing(reason: str) -> None:
    """Skip the test (laptop) or fail it (CI) because a service is missing."""
    if in_ci():
        pytest.fail(f"{reason} (CI must not skip service tests)", pytrace=False)
    pytest.skip(reason)


@pytest_asyncio.fixture
async def docker_engine() -> AsyncIterator[object]:
    """An aiodocker client of the real engine that has tether's test images.

    asyncio only: aiodocker (like aiohttp under it) does not run on trio.
    """
    try:
        import aiodocker
    except ImportError:
        missing("aiodocker is not installed: pip install 'tether[docker]'")
    client = aiodocker.Docker()
    try:
        try:
            await client.version()
        except Exception as exc:  # any failure to answer: socket missing, refused, engine down
            where = os.environ.get("DOCKER_HOST", f"unix://{DOCKER_SOCKET}")
            missing(f"Docker engine not reachable at {where} ({exc}); run {START}")
        for image in (IMPORTED_IMAGE, BUILT_IMAGE):
            try:
                await client.images.inspect(image)
            except aiodocker.DockerError:
                missing(f"test image {image} is not built; run {START}")
        yield client
    finally:
        await client.close()


class _UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("docker", timeout=30)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self._path)


def docker_api(method: str, path: str) -> tuple[int, Any]:
    """A synchronous call to the engine's API (for checks the tests make themselves)."""
    connection = _UnixHTTP(DOCKER_SOCKET)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    try:
        return response.status, json.loads(body) if body else None
    except ValueError:
        return response.status, body.decode(errors="replace")


@pytest.fixture
def docker_service() -> None:
    """Require the real engine and tether's test images, from synchronous code."""
    try:
        status, _ = docker_api("GET", "/_ping")
    except OSError as exc:
        missing(f"Docker engine not reachable at unix://{DOCKER_SOCKET} ({exc}); run {START}")
    for image in (IMPORTED_IMAGE, BUILT_IMAGE):
        status, _ = docker_api("GET", f"/images/{image}/json")
        if status != 200:
            missing(f"test image {image} is not built; run {START}")


SLURM_START = "bash scripts/slurm-cluster.sh"


@pytest.fixture
def slurm_service() -> None:
    """Require the real one-node Slurm cluster (commands on PATH, slurmctld up)."""
    from tether.backends.slurm.config import controller_availability

    found = controller_availability()
    if not found:
        missing(f"Slurm cluster not usable: {found.reason}; run {SLURM_START}")


def slurm_jobs(job_id: str) -> dict[str, str]:
    """squeue's states of ``job_id`` (an array's members too), finished ones included."""
    proc = subprocess.run(
        ["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T", "-j", job_id.split("_")[0]],
        capture_output=True,
        text=True,
        check=False,
    )
    rows = dict(line.split("|", 1) for line in proc.stdout.split())
    if "_" in job_id:
        return {k: v for k, v in rows.items() if k == job_id}
    return rows


@contextlib.contextmanager
def small_tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A real file system of ``size`` (tmpfs, needs root) at ``where``, unmounted after:
    what full-disk tests fill. Missing is a skip on a laptop, a failure in CI."""
    where.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        missing(f"cannot mount a {size} tmpfs for the full-disk tests: {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


async def cancel_from_a_cancelled_caller(handle: Any, how: str) -> None:
    """Await ``handle.cancel()`` from a caller asyncio cancels at once (``task_cancel``
    or ``wait_for`` with a tiny timeout), as the caller sees it."""
    import asyncio

    if how == "wait_for":
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(handle.cancel(), 0.0001)
        return
    task = asyncio.ensure_future(handle.cancel())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
