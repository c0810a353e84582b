"""The Slurm backend on the real one-node cluster (scripts/slurm-cluster.sh).

The contract suite (tests/contract) covers what every backend promises; these
tests cover what is Slurm's own: one squeue call for all tracked jobs and none
while nothing is tracked, job arrays, find by job name, Slurm's refusals, the
sbatch throttle, runs the controller has forgotten, records that name someone
else's job, and the cache and a killed pipeline over Slurm.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import time
from pathlib import Path

import anyio
import pytest

import tether
from tether import (
    CachedBackend,
    Call,
    DirectoryStore,
    Ensemble,
    Job,
    RunState,
    SlurmConfig,
    SlurmRunHandle,
    SubmitError,
)

from . import pipeline_crash_support as support
from .contract.harness import kill_run
from .services import slurm_jobs

pytestmark = [pytest.mark.anyio, pytest.mark.slurm, pytest.mark.usefixtures("slurm_service")]

#: Slurm states of a job that is over.
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def config(tmp_path: Path, **settings: object) -> SlurmConfig:
    options: dict[str, object] = {
        "runs_dir": tmp_path / "runs",
        "cancel_grace": 2,
        "lost_grace": 3,
        "poll_interval": 0.5,
    }
    options.update(settings)
    return SlurmConfig(**options)  # type: ignore[arg-type]


def counting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *tools: str) -> Path:
    """Put wrappers of ``tools`` first on PATH; each call appends a line to ``calls.log``
    (tool, start and end time), so tests count and time Slurm commands."""
    folder = tmp_path / "bin"
    folder.mkdir()
    log = tmp_path / "calls.log"
    for tool in tools:
        real = subprocess.run(["which", tool], capture_output=True, text=True, check=True)
        wrapper = folder / tool
        wrapper.write_text(
            "#!/bin/bash\n"
            "start=$(date +%s.%N)\n"
            f'{real.stdout.strip()} "$@"; code=$?\n'
            f'echo "{tool} $start $(date +%s.%N)" >> {log}\n'
            "exit $code\n"
        )
        wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}:{os.environ['PATH']}")
    return log


def calls(log: Path, tool: str) -> list[tuple[float, float]]:
    if not log.exists():
        return []
    rows = [line.split() for line in log.read_text().splitlines()]
    return [(float(row[1]), float(row[2])) for row in rows if row[0] == tool]


# -- one query for every job ----------------------------------------------------------


async def test_waiting_on_many_jobs_costs_one_squeue_per_round(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = config(tmp_path, poll_interval=0.5, poll_interval_max=1.0).create()
    handles = [await backend.submit(Job(name=f"w{i}", command="sleep 3")) for i in range(12)]
    log = counting(tmp_path, monkeypatch, "squeue")
    began = time.monotonic()
    async with anyio.create_task_group() as group:
        for handle in handles:
            group.start_soon(handle.wait)
    took = time.monotonic() - began
    assert all(h.state is RunState.SUCCEEDED for h in handles)
    queried = len(calls(log, "squeue"))
    # About one query per interval for all twelve: not twelve per interval.
    assert 1 <= queried <= took / 0.5 + 3, (queried, took)
    # Nothing tracked: not a single call more.
    await anyio.sleep(2)
    assert len(calls(log, "squeue")) == queried


async def test_the_watcher_backs_off_while_nothing_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = config(tmp_path, poll_interval=0.3, poll_interval_max=2.0).create()
    handle = await backend.submit(Job(name="slow", command="sleep 9"))
    log = counting(tmp_path, monkeypatch, "squeue")
    await handle.wait()
    starts = [start for start, _ in calls(log, "squeue")]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert len(starts) <= 16, starts  # 0.3 s flat would be over 30 calls
    assert gaps and max(gaps) > 1.2, gaps  # it reached the longer intervals


async def test_refreshing_many_handles_at_once_shares_one_squeue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = config(tmp_path).create()
    handles = [await backend.submit(Job(name=f"r{i}", command="sleep 5")) for i in range(8)]
    log = counting(tmp_path, monkeypatch, "squeue")
    async with anyio.create_task_group() as group:
        for handle in handles:
            group.start_soon(handle.refresh)
    assert len(calls(log, "squeue")) == 1
    for handle in handles:
        await handle.cancel()


# -- arrays ---------------------------------------------------------------------------


def _member(seed: object, scale: float) -> float:
    import numpy as np

    return float(np.random.default_rng(seed).normal() * scale)  # type: ignore[arg-type]


async def test_map_calls_submits_one_array_and_gets_every_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = counting(tmp_path, monkeypatch, "sbatch")
    values = await tether.map_calls(math.factorial, range(8), backend=config(tmp_path))
    assert values == [math.factorial(i) for i in range(8)]
    assert len(calls(log, "sbatch")) == 1
    members = sorted((tmp_path / "runs").iterdir())
    assert len(members) == 8
    records = [json.loads((m / "handle.json").read_text())["data"] for m in members]
    assert len({r["job_id"].split("_")[0] for r in records}) == 1  # one array job


async def test_ensemble_on_slurm_is_bit_identical_to_inline(tmp_path: Path) -> None:
    ensemble = Ensemble(_member, n=6, seed=2024, args=(3.0,))
    on_slurm = await ensemble.run(config(tmp_path))
    in_process = await ensemble.run(tether.InlineConfig())
    assert on_slurm == in_process  # floats compared exactly


async def test_array_max_concurrency_limits_members_running_at_once(tmp_path: Path) -> None:
    backend = config(tmp_path).create()
    handles = await backend.submit_array(
        [Job(name="lim", command="sleep 2") for _ in range(4)], max_concurrency=2
    )
    assert isinstance(handles[0], SlurmRunHandle)
    base = handles[0].job_id.split("_")[0]
    assert [h.job_id for h in handles] == [f"{base}_{i}" for i in range(4)]  # type: ignore[attr-defined]
    running = 0
    for _ in range(30):
        states = slurm_jobs(base)
        running = max(running, sum(state == "RUNNING" for state in states.values()))
        assert running <= 2, states
        if set(states.values()) <= ENDED and len(states) == 4:
            break
        await anyio.sleep(0.2)
    results = [await h.wait(60) for h in handles]
    assert [r.state for r in results] == [RunState.SUCCEEDED] * 4


async def test_a_failing_member_cancels_the_rest_of_the_array(tmp_path: Path) -> None:
    calls_ = [Call(time.sleep, 30) for _ in range(3)] + [Call(int, "not a number")]
    with pytest.raises(ValueError, match="invalid literal"):
        await tether.ensemble.run_calls(calls_, config(tmp_path))
    records = [
        json.loads((m / "handle.json").read_text())["data"]["job_id"]
        for m in (tmp_path / "runs").iterdir()
    ]
    for job_id in records:
        assert set(slurm_jobs(job_id).values()) <= ENDED, job_id


# -- find, refusals, storms ----------------------------------------------------------


async def test_find_gets_the_job_back_by_its_name_when_the_record_is_missing(
    tmp_path: Path,
) -> None:
    backend = config(tmp_path).create()
    job = Job(name="found", command="echo found; sleep 2")
    assert await backend.find(job, "step-1") is None
    handle = await backend.submit(job, run_id="step-1")
    (handle.run_dir / "handle.json").unlink()  # killed between sbatch and the record
    found = await backend.find(job, "step-1")
    assert found is not None and found.job_id == handle.job_id
    assert (await found.wait(30)).state is RunState.SUCCEEDED
    assert [line async for line in found.logs()] == ["found"]
    again = await backend.find(job, "step-1")  # from the record find() wrote
    assert again is not None and again.job_id == handle.job_id


async def test_a_refused_submission_carries_slurms_message(tmp_path: Path) -> None:
    backend = config(tmp_path, partition="no-such-partition").create()
    with pytest.raises(SubmitError, match=r"sbatch refused the job: .*[Ii]nvalid partition"):
        await backend.submit(Job(command="true"))
    assert list((tmp_path / "runs").iterdir()) == []  # nothing half-made is left
    verdict = await backend.check()
    assert not verdict and "no-such-partition" in verdict.reason


async def test_a_submission_storm_runs_a_bounded_number_of_sbatch_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = counting(tmp_path, monkeypatch, "sbatch")
    backend = config(tmp_path, max_submits=3).create()
    handles: list[tether.RunHandle] = []

    async def one(index: int) -> None:
        handles.append(await backend.submit(Job(name=f"s{index}", command="true")))

    async with anyio.create_task_group() as group:
        for index in range(24):
            group.start_soon(one, index)
    spans = calls(log, "sbatch")
    assert len(spans) == 24
    # The wrapper's own start-up blurs the edges a little: count true overlaps.
    most = max(sum(1 for s, e in spans if s < mid < e) for mid in (s + 0.001 for s, _ in spans))
    assert most <= 3, most
    for handle in handles:
        await handle.wait(60)


# -- records from elsewhere -----------------------------------------------------------


async def test_a_forgotten_job_reads_its_outcome_or_is_lost(tmp_path: Path) -> None:
    backend = config(tmp_path).create()
    handle = await backend.submit(Job(command="echo done"))
    await handle.wait(30)
    record = json.loads((handle.run_dir / "handle.json").read_text())
    # The controller forgot the job (MinJobAge): an id it never knew stands for that.
    record["data"]["job_id"] = "99999999"
    record["data"]["submitted_at"] = time.time() - 3 * 3600
    forgotten = tmp_path / "forgotten.json"
    forgotten.write_text(json.dumps(record))
    reloaded = await tether.load_handle(forgotten)
    assert (await reloaded.wait(10)).state is RunState.SUCCEEDED  # from exit.json
    (handle.run_dir / "exit.json").unlink()
    gone = await tether.load_handle(forgotten)
    began = time.monotonic()
    assert await gone.refresh() is RunState.LOST  # at once: it ended long ago
    assert time.monotonic() - began < 5
    assert "without recording an outcome" in (gone.last_result.error or "")  # type: ignore[union-attr]


async def test_a_record_naming_another_job_never_touches_it(tmp_path: Path) -> None:
    backend = config(tmp_path).create()
    victim = await backend.submit(Job(name="victim", command="sleep 20"))
    mine = await backend.submit(Job(name="mine", command="sleep 20"))
    record = json.loads((mine.run_dir / "handle.json").read_text())
    record["data"]["job_id"] = victim.job_id
    crafted = tmp_path / "crafted.json"
    crafted.write_text(json.dumps(record))
    handle = await tether.load_handle(crafted)
    await handle.cancel()
    assert handle.state is RunState.LOST
    assert "not this run's" in (handle.last_result.error or "")  # type: ignore[union-attr]
    assert await victim.refresh() in (RunState.PENDING, RunState.RUNNING)
    await victim.cancel()
    await mine.cancel()


async def test_cancel_of_a_pending_job_never_runs_it(tmp_path: Path) -> None:
    backend = config(tmp_path, extra_sbatch=["--begin=now+3600"]).create()
    handle = await backend.submit(Job(command="touch ran"))
    assert await handle.refresh() is RunState.PENDING
    await handle.cancel()
    assert handle.state is RunState.CANCELLED
    assert set(slurm_jobs(handle.job_id).values()) <= {"CANCELLED"}
    assert not (handle.run_dir / "ran").exists()


async def test_a_job_killed_outright_is_lost_with_slurms_word(tmp_path: Path) -> None:
    backend = config(tmp_path).create()
    handle = await backend.submit(Job(command="sleep 30"))
    kill_run(handle)  # as a node crash would: no outcome is recorded
    result = await handle.wait(30)
    assert result.state is RunState.LOST
    assert f"job {handle.job_id} ended (Slurm says" in (result.error or "")


# -- the cache and pipelines over Slurm ------------------------------------------------


async def test_a_cached_slurm_step_runs_once(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path / "cache")
    backend = CachedBackend(config(tmp_path).create(), store)
    job = Job(name="cached", command="echo $RANDOM", outputs=[])
    first_handle = await backend.submit(job)
    first = await first_handle.wait(60)
    second_handle = await backend.submit(job)
    second = await second_handle.wait(60)
    assert first.state is RunState.SUCCEEDED
    assert (first_handle.hit, second_handle.hit) == (False, True)
    assert await second.read_stdout() == await first.read_stdout()  # $RANDOM ran once


@pytest.mark.timeout(120)
def test_a_pipeline_killed_inside_a_slurm_submit_finds_its_job(tmp_path: Path) -> None:
    support.kill_inside_submit_and_resume(tmp_path, "slurm")


async def test_gpus_on_a_cluster_without_them_is_slurms_refusal(tmp_path: Path) -> None:
    backend = config(tmp_path).create()
    with pytest.raises(SubmitError, match=r"sbatch refused the job: .*(gres|GRES)"):
        await backend.submit(Job(command="nvidia-smi", resources={"gpus": 1}))


async def test_check_says_when_the_controller_does_not_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A controller that is down answers scontrol ping like this (exit status 1).
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "scontrol").write_text("#!/bin/sh\necho 'Slurmctld(primary) at vm is DOWN'\nexit 1\n")
    (folder / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}:{os.environ['PATH']}")
    verdict = await config(tmp_path).create().check()
    assert not verdict
    assert verdict.reason == "slurmctld not responding (Slurmctld(primary) at vm is DOWN)"


async def test_a_runs_folder_with_spaces_works(tmp_path: Path) -> None:
    backend = config(tmp_path, runs_dir=tmp_path / "runs with space").create()
    job = Job(name="spaced", command="echo spaced")
    handle = await backend.submit(job, run_id="spaced-1")
    assert (await handle.wait(30)).state is RunState.SUCCEEDED
    (handle.run_dir / "handle.json").unlink()
    found = await backend.find(job, "spaced-1")
    assert found is not None and found.job_id == handle.job_id
