"""Docker faults from issue 14: cancel that finishes whatever cancels its caller, crafted
records, timeouts with nobody attached, submitters killed mid-submit."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

import tether
from tether import DockerConfig, DockerRunHandle, Job, RunState

from .cli_support import CLI
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


# -- a record is input, not authority ----------------------------------------------------


def _own_container() -> str:
    """A container of the test's own (no tether label), running until removed."""
    out = subprocess.run(
        ["docker", "run", "-d", "--network", "none", IMPORTED_IMAGE, "sleep", "300"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return out.stdout.strip()


def _running(container: str) -> bool:
    status, info = docker_api("GET", f"/containers/{container}/json")
    return status == 200 and bool(info["State"]["Running"])


@pytest.mark.asyncio
async def test_crafted_record_never_touches_a_container_tether_did_not_create(
    tmp_path: Path,
) -> None:
    """A handle naming a container without the run's label is LOST with the reason; the
    API and ``tether cancel`` leave the container running."""
    cfg = DockerConfig(image=IMPORTED_IMAGE, runs_dir=tmp_path / "runs")
    handle = await cfg.create().submit(Job(name="real", command="sleep 30"))
    await handle.cancel()
    victim = _own_container()
    try:
        record = json.loads((handle.run_dir / "handle.json").read_text())  # type: ignore[operator]
        record["data"]["container_id"] = victim
        record["data"]["started_at"] = 0  # past its deadline: a stop would be due
        run_dir = tmp_path / "runs" / "crafted"
        run_dir.mkdir(mode=0o700)
        record["data"]["run_dir"] = str(run_dir)
        crafted = tmp_path / "crafted.json"
        crafted.write_text(json.dumps(record))
        loaded = await tether.load_handle(crafted)
        assert await loaded.refresh() is RunState.LOST
        await loaded.cancel()
        assert [line async for line in loaded.logs()] == []
        result = await loaded.wait()
        assert "is not this run's" in (result.error or "")
        assert "not touching it" in (result.error or "")
        cli = CLI(tmp_path)
        for verb in ("cancel", "status"):
            done = cli(verb, crafted)
            assert "Traceback" not in done.stderr
        assert _running(victim), "a crafted record stopped a container tether did not create"
    finally:
        subprocess.run(["docker", "rm", "-f", victim], capture_output=True, timeout=60)


# -- timeouts with nobody attached -------------------------------------------------------


@pytest.mark.asyncio
async def test_timeout_is_enforced_with_nobody_attached(tmp_path: Path) -> None:
    """Runs whose handles nobody waits on are stopped at their deadline by their
    watchdog, and their end is recorded (TIMED_OUT) and their container removed."""
    cfg = DockerConfig(image=IMPORTED_IMAGE, runs_dir=tmp_path / "runs", cancel_grace=1)
    backend = cfg.create()
    job = Job(name="t", command="sleep 300", resources={"walltime": 2})
    handles = [await backend.submit(job) for _ in range(3)]
    records = [h.run_dir / "handle.json" for h in handles]  # type: ignore[operator]
    containers = [h.container_id for h in handles]  # type: ignore[attr-defined]
    del handles
    with anyio.fail_after(90):
        while not all((r.parent / "exit.json").exists() for r in records):  # noqa: ASYNC110
            await anyio.sleep(0.2)  # files another process writes
    for record, container in zip(records, containers, strict=True):
        data = json.loads((record.parent / "exit.json").read_text())
        assert data["reason"] == "timeout"
        assert data["ended"] - data["started"] < 60
        result = await (await tether.load_handle(record)).wait(30)
        assert result.state is RunState.TIMED_OUT
        with anyio.fail_after(30):
            while docker_api("GET", f"/containers/{container}/json")[0] != 404:  # noqa: ASYNC110
                await anyio.sleep(0.2)


# -- no run without a record, none twice ------------------------------------------------

_SUBMITTER = """
import asyncio, sys
from tether import DockerConfig, Job

async def main():
    cfg = DockerConfig(image=sys.argv[1], runs_dir=sys.argv[2], volumes=[sys.argv[3] + ":/shared"])
    job = Job(name="once", command="echo $TETHER_RUN_ID >> /shared/count")
    print("submitting", flush=True)
    await cfg.create().submit(job, run_id=sys.argv[4])
    print("submitted", flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


def _kill_submitters(trials: int, script: Path, runs: Path, shared: Path) -> None:
    """Start ``trials`` submitters one after another, each SIGKILLed at a random point."""
    rng = random.Random(14)
    for i in range(trials):
        process = subprocess.Popen(
            [sys.executable, str(script), IMPORTED_IMAGE, str(runs), str(shared), f"trial-{i}"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "submitting"
        time.sleep(rng.uniform(0.0, 0.6))
        process.kill()
        process.wait()
        process.stdout.close()


@pytest.mark.asyncio
async def test_killed_submitters_leave_no_run_without_record_and_none_twice(
    tmp_path: Path,
) -> None:
    """Submitters SIGKILLed at random points of ``submit``: every container that ran has
    a record, and ``find`` then ``submit`` with the same run id runs each job once."""
    trials = int(os.environ.get("TETHER_TRIALS", "8"))
    shared = tmp_path / "shared"
    shared.mkdir()
    runs = tmp_path / "runs"
    script = tmp_path / "submitter.py"
    script.write_text(_SUBMITTER)
    await anyio.to_thread.run_sync(_kill_submitters, trials, script, runs, shared)
    cfg = DockerConfig(image=IMPORTED_IMAGE, runs_dir=runs, volumes=[f"{shared}:/shared"])
    backend = cfg.create()
    job = Job(name="once", command="echo $TETHER_RUN_ID >> /shared/count")
    found = 0
    for i in range(trials):
        handle = await backend.find(job, f"trial-{i}")
        if handle is None:
            handle = await backend.submit(job, run_id=f"trial-{i}")
        else:
            found += 1
        assert (await handle.wait(60)).state is RunState.SUCCEEDED
    lines = (shared / "count").read_text().split()
    assert sorted(lines) == sorted(f"trial-{i}" for i in range(trials)), "a job ran twice or never"
    for i in range(trials):
        assert (runs / f"trial-{i}" / "handle.json").is_file()
    ours = [
        c
        for c in docker_api("GET", "/containers/json?all=1")[1]
        if str((c.get("Labels") or {}).get("tether.run_dir", "")).startswith(str(runs))
    ]
    assert all(c["State"] not in ("created", "running") for c in ours), ours
    print(f"{trials} killed submitters: {found} runs found again, {trials - found} resubmitted")


@pytest.mark.asyncio
async def test_the_same_chosen_run_id_in_two_runs_folders_does_not_collide(
    tmp_path: Path,
) -> None:
    """Two pipelines (runs folders) choosing the same run id both run: container names
    are global on the engine, so they carry the run folder's digest too."""
    job = Job(name="same", command="echo ran")
    handles = [
        await DockerConfig(image=IMPORTED_IMAGE, runs_dir=tmp_path / f"runs{i}")
        .create()
        .submit(job, run_id="same-id")
        for i in range(2)
    ]
    for handle in handles:
        result = await handle.wait(60)
        assert result.state is RunState.SUCCEEDED, result.error
        assert await result.read_stdout() == "ran\n"
