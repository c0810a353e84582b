"""Docker faults from issue 14: cancel that finishes whatever cancels its caller."""

from __future__ import annotations

import asyncio
from pathlib import Path

import anyio
import pytest

from tether import DockerConfig, DockerRunHandle, Job, RunState

from .services import IMPORTED_IMAGE, docker_api

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_service")]


@pytest.mark.asyncio
async def test_cancel_finishes_when_its_caller_is_cancelled_at_once(tmp_path: Path) -> None:
    cfg = DockerConfig(image=IMPORTED_IMAGE, runs_dir=tmp_path / "runs", cancel_grace=2)
    job = Job(name="t", command=["sh", "-c", "trap '' TERM; echo up; sleep 1000"])
    handle = await cfg.create().submit(job)
    assert isinstance(handle, DockerRunHandle)
    # Until the trap is set (TERM is then ignored); no engine event says "line written".
    with anyio.fail_after(60):
        while "up" not in [line async for line in handle.logs()]:  # noqa: ASYNC110
            await anyio.sleep(0.1)
    with pytest.raises((asyncio.TimeoutError, TimeoutError)):
        await asyncio.wait_for(handle.cancel(), 0.0001)
    status, info = docker_api("GET", f"/containers/{handle.container_id}/json")
    running = status == 200 and info["State"]["Running"]
    assert not running, "the TERM-ignoring container outlived cancel()"
    fresh = await DockerRunHandle.load(handle.run_dir / "handle.json")
    assert (await fresh.refresh()) is RunState.CANCELLED
