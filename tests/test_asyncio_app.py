"""tether inside a plain asyncio application (driven by pytest-asyncio)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import tether
from tether import DummyConfig, Job, LocalConfig, RunState


@pytest.mark.asyncio
async def test_gather_many_handles(tmp_path: Path) -> None:
    backend = LocalConfig(runs_dir=tmp_path).create()
    handles = await asyncio.gather(*(backend.submit(Job(command=f"echo {i}")) for i in range(10)))
    results = await asyncio.gather(*handles)  # handles are awaitables
    assert [await r.read_stdout() for r in results] == [f"{i}\n" for i in range(10)]


@pytest.mark.asyncio
async def test_wait_for_timeout_does_not_cancel_run(tmp_path: Path) -> None:
    handle = await LocalConfig(runs_dir=tmp_path).create().submit(Job(command="sleep 5"))
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(handle.wait(), 0.2)
    assert await handle.refresh() is RunState.RUNNING
    await handle.cancel()


@pytest.mark.asyncio
async def test_run_cancels_the_run_it_owns(tmp_path: Path) -> None:
    config = DummyConfig(runs_dir=tmp_path, duration=30)
    task = asyncio.create_task(tether.run(Job(name="owned"), config))
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    [folder] = list(tmp_path.iterdir())
    handle = await tether.load_handle(folder / "handle.json")
    assert await handle.refresh() is RunState.CANCELLED


@pytest.mark.asyncio
async def test_run_defaults_to_local(tether_home: Path) -> None:
    result = await tether.run(Job(command="echo default"))
    assert result.ok
    assert result.stdout is not None and result.stdout.is_relative_to(tether_home / "runs")


def test_run_sync(tmp_path: Path) -> None:
    result = tether.run_sync(Job(command=["echo", "sync"]), LocalConfig(runs_dir=tmp_path))
    assert result.ok and result.exit_code == 0
    with pytest.raises(tether.WaitTimeout):
        tether.run_sync(Job(), DummyConfig(runs_dir=tmp_path, duration=5), timeout=0.1)
