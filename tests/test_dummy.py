"""Dummy-backend behaviour beyond the shared contract."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

import tether
from tether import DummyConfig, Job, RunState

pytestmark = pytest.mark.anyio


async def test_queue_then_run_then_outputs(tmp_path: Path) -> None:
    config = DummyConfig(
        runs_dir=tmp_path, queue_time=0.3, duration=0.3, outputs={"res/a.txt": "A"}
    )
    handle = await config.create().submit(Job(name="sim", outputs=["res/*.txt"]))
    assert await handle.refresh() is RunState.PENDING
    await anyio.sleep(0.4)
    assert await handle.refresh() is RunState.RUNNING
    result = await handle.wait()
    assert result.ok and result.outputs == [handle.run_dir / "res" / "a.txt"]
    assert result.outputs[0].read_text() == "A"


async def test_outcomes_are_deterministic(tmp_path: Path) -> None:
    failed = await tether.run(Job(), DummyConfig(runs_dir=tmp_path, outcome="failed", exit_code=9))
    assert (failed.state, failed.exit_code) == (RunState.FAILED, 9)
    lost = await tether.run(Job(), DummyConfig(runs_dir=tmp_path, outcome="lost"))
    assert lost.state is RunState.LOST


async def test_cancel_midway_keeps_lines_seen_so_far(tmp_path: Path) -> None:
    config = DummyConfig(runs_dir=tmp_path, duration=2, stdout="a\nb\nc\nd\n")
    handle = await config.create().submit(Job())
    await anyio.sleep(0.7)
    await handle.cancel()
    result = await handle.wait()
    assert result.state is RunState.CANCELLED
    assert (await result.read_stdout()).splitlines() == ["a", "b"]


def test_output_paths_must_stay_inside() -> None:
    with pytest.raises(ValueError, match="relative path inside"):
        DummyConfig(outputs={"../escape": "x"})
