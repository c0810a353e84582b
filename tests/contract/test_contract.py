"""DESIGN.md's seven contracts, checked once for every backend (see harness.py)."""

from __future__ import annotations

import base64
import json
import os
import pickle
import signal
import sys
import time
from pathlib import Path

import anyio
import pytest
from pydantic import SecretStr

import tether
from tether import RecordError, RecordVersionError, RunFailedError, RunState, WaitTimeout

from ..conftest import run_python
from .harness import Harness

pytestmark = pytest.mark.anyio

LOAD_AND_WAIT = """
import json, sys, anyio, tether
async def main():
    handle = await tether.load_handle(sys.argv[1])
    first = (await handle.refresh()).value
    result = await handle.wait(60)
    print(json.dumps({"run_id": handle.run_id, "first": first, "state": result.state.value,
                      "exit_code": result.exit_code, "stdout": await result.read_stdout()}))
anyio.run(main)
"""


# 1. submit returns quickly; the run goes on unattended ---------------------------


async def test_submit_returns_quickly_and_run_proceeds(harness: Harness) -> None:
    backend, job = harness.make(lines=["started"], duration=3)
    began = time.monotonic()
    handle = await backend.submit(job)
    assert time.monotonic() - began < 1.5
    assert handle.state in (RunState.PENDING, RunState.RUNNING)
    assert not await handle.is_complete()
    await handle.cancel()


async def test_wait_gives_terminal_result_with_output(harness: Harness) -> None:
    backend, job = harness.make(lines=["hello", "world"], duration=0.3)
    handle = await backend.submit(job)
    result = await handle.wait()
    assert result.state is RunState.SUCCEEDED and result.ok
    assert result.exit_code == 0
    assert await result.read_stdout() == "hello\nworld\n"
    assert await handle.is_complete()
    assert await handle.result() == result
    assert await handle == result  # a handle is awaitable
    assert result.started_at is not None and result.ended_at is not None
    assert result.duration is not None and result.duration >= 0.2


async def test_failing_run_reports_exit_code(harness: Harness) -> None:
    backend, job = harness.make(lines=["oops"], exit_code=3)
    handle = await backend.submit(job)
    result = await handle.wait()
    assert result.state is RunState.FAILED
    assert result.exit_code == 3
    assert result.error and "3" in result.error
    with pytest.raises(RunFailedError, match="FAILED"):
        await handle.result()


# 2. wait(timeout) raises TimeoutError and leaves the run going -------------------


async def test_wait_timeout_leaves_run_going(harness: Harness) -> None:
    backend, job = harness.make(duration=3)
    handle = await backend.submit(job)
    with pytest.raises(TimeoutError):
        await handle.wait(timeout=0.2)
    with pytest.raises(WaitTimeout):
        await handle.wait(timeout=0.1)
    assert (await handle.refresh()) in (RunState.PENDING, RunState.RUNNING)
    await handle.cancel()
    assert handle.state is RunState.CANCELLED


# 3. cancelling the waiter does not cancel the run; cancel() does -----------------


async def test_cancelling_waiter_keeps_run_then_cancel_ends_it(harness: Harness) -> None:
    backend, job = harness.make(lines=["x"], duration=10)
    handle = await backend.submit(job)
    async with anyio.create_task_group() as tg:
        tg.start_soon(handle.wait)
        await anyio.sleep(0.2)
        tg.cancel_scope.cancel()
    assert (await handle.refresh()) in (RunState.PENDING, RunState.RUNNING)
    began = time.monotonic()
    await handle.cancel()
    assert time.monotonic() - began < 5
    assert handle.state is RunState.CANCELLED
    result = await handle.wait()
    assert result.state is RunState.CANCELLED
    harness.assert_nothing_running(handle)


async def test_cancel_is_idempotent_shielded_and_noop_when_done(harness: Harness) -> None:
    backend, job = harness.make(duration=10)
    handle = await backend.submit(job)
    with anyio.CancelScope() as scope:
        scope.cancel()  # the caller is already cancelled: cancel() must still finish
        await handle.cancel()
    assert handle.state is RunState.CANCELLED
    await handle.cancel()
    assert handle.state is RunState.CANCELLED
    harness.assert_nothing_running(handle)

    backend, job = harness.make(lines=["done"])
    finished = await backend.submit(job)
    await finished.wait()
    await finished.cancel()
    assert finished.state is RunState.SUCCEEDED


async def test_cancel_from_reloaded_handle(harness: Harness, tmp_path: Path) -> None:
    backend, job = harness.make(duration=10)
    handle = await backend.submit(job)
    await handle.save(tmp_path / "h.json")
    other = await tether.load_handle(tmp_path / "h.json")
    await other.cancel()
    assert other.state is RunState.CANCELLED
    assert (await handle.refresh()) is RunState.CANCELLED
    harness.assert_nothing_running(handle)


# 4. save / load in a fresh process, whatever the state; unfindable → LOST ---------


async def test_reattach_running_run_in_fresh_process(harness: Harness, tmp_path: Path) -> None:
    # Long enough that a fresh interpreter on a busy machine re-attaches before the end.
    backend, job = harness.make(lines=["from-before", "and-after"], duration=4, exit_code=4)
    handle = await backend.submit(job)
    path = await handle.save(tmp_path / "run.json")
    assert path.stat().st_mode & 0o777 == 0o600
    seen = await anyio.to_thread.run_sync(run_python, LOAD_AND_WAIT, str(path))
    assert seen["run_id"] == handle.run_id
    if "reattach" not in backend.capabilities:
        # The run lives in this process only: elsewhere it is LOST, not an error.
        assert seen["state"] == "LOST"
        assert (await handle.wait(10)).exit_code == 4  # here it went on
        return
    assert seen["first"] in ("PENDING", "RUNNING")
    assert seen["state"] == "FAILED" and seen["exit_code"] == 4
    assert seen["stdout"] == "from-before\nand-after\n"


async def test_reattach_finished_run_in_fresh_process(harness: Harness, tmp_path: Path) -> None:
    backend, job = harness.make(lines=["finished"])
    handle = await backend.submit(job)
    await handle.wait()
    path = await handle.save(tmp_path / "run.json")
    seen = await anyio.to_thread.run_sync(run_python, LOAD_AND_WAIT, str(path))
    if "reattach" not in backend.capabilities:
        assert (seen["first"], seen["state"]) == ("LOST", "LOST")
        again = await tether.load_handle(path)  # in this process it re-attaches
        assert (await again.wait()).state is RunState.SUCCEEDED
        return
    assert (seen["first"], seen["state"], seen["exit_code"]) == ("SUCCEEDED", "SUCCEEDED", 0)
    assert seen["stdout"] == "finished\n"


async def test_unfindable_run_is_lost_not_an_error(harness: Harness, tmp_path: Path) -> None:
    backend, job = harness.make(duration=10)
    handle = await backend.submit(job)
    path = await handle.save(tmp_path / "run.json")
    if "reattach" not in backend.capabilities:
        # Another process cannot find an in-process run at all: LOST, with the reason.
        seen = await anyio.to_thread.run_sync(run_python, LOAD_AND_WAIT, str(path))
        assert seen["state"] == "LOST"
        await handle.cancel()
        return
    harness.lose(handle)
    await anyio.sleep(0.1)
    seen = await anyio.to_thread.run_sync(run_python, LOAD_AND_WAIT, str(path))
    assert seen["state"] == "LOST"
    assert (await handle.wait(10)).state is RunState.LOST


async def test_crash_of_submitter_loses_nothing(harness: Harness, tmp_path: Path) -> None:
    """A process submits, saves the handle and SIGKILLs itself; we re-attach."""
    backend, job = harness.make(lines=["survived"], duration=1.0, exit_code=7)
    record = tmp_path / "crash.json"
    script = """
import base64, os, pickle, signal, sys, anyio, tether
async def main():
    config = tether.load_config(sys.argv[1])
    job = pickle.loads(base64.b64decode(sys.argv[2]))  # a Call keeps its arguments
    handle = await config.create().submit(job)
    await handle.save(sys.argv[3])
    os.kill(os.getpid(), signal.SIGKILL)
anyio.run(main)
"""
    config_file = tmp_path / "backend.json"
    config_file.write_text(json.dumps(backend.config.model_dump(mode="json")))
    pickled = base64.b64encode(pickle.dumps(job)).decode()
    proc = await anyio.run_process(
        [sys.executable, "-c", script, str(config_file), pickled, str(record)], check=False
    )
    assert proc.returncode == -signal.SIGKILL
    handle = await tether.load_handle(record)
    if "detached" not in backend.capabilities:
        # The run died with the process that ran it: LOST, never a hang or an error.
        result = await handle.wait(30)
        assert result.state is RunState.LOST and result.error
        return
    result = await handle.wait(30)
    assert result.state is RunState.FAILED and result.exit_code == 7
    assert await result.read_stdout() == "survived\n"


# 5. the backend enforces the run's timeout ---------------------------------------


async def test_timeout_ends_in_timed_out(harness: Harness) -> None:
    backend, job = harness.make(lines=["start"], duration=30, walltime=1)
    handle = await backend.submit(job)
    began = time.monotonic()
    result = await handle.wait(20)
    assert result.state is RunState.TIMED_OUT
    assert time.monotonic() - began < 10
    assert "timed out" in (result.error or "")
    harness.assert_nothing_running(handle)
    # rompy's users catch a timed-out run's result() as a built-in TimeoutError.
    with pytest.raises(TimeoutError, match="ended TIMED_OUT") as caught:
        await handle.result()
    assert isinstance(caught.value, tether.RunFailedError)
    assert caught.value.result.state is RunState.TIMED_OUT


async def test_timeout_enforced_without_any_attached_process(
    harness: Harness, tmp_path: Path
) -> None:
    backend, job = harness.make(duration=30, walltime=1)
    handle = await backend.submit(job)
    path = await handle.save(tmp_path / "run.json")
    if "detached" not in backend.capabilities:
        # Nobody waits; the run's own process still ends it on time.
        await anyio.sleep(4)
        assert (await handle.refresh()) is RunState.TIMED_OUT
        harness.assert_nothing_running(handle)
        return
    del handle  # nobody in this process watches the run
    await anyio.sleep(4)
    reloaded = await tether.load_handle(path)
    # On a busy machine a scheduler may start the run late (the walltime counts from
    # its start): look now and then, never waiting on the run, until it has ended.
    with anyio.move_on_after(30):
        while not (await reloaded.refresh()).is_terminal:  # noqa: ASYNC110 (polling is the point)
            await anyio.sleep(0.5)
    assert reloaded.state is RunState.TIMED_OUT
    harness.assert_nothing_running(reloaded)


# 6. secrets never reach saved handles, logs or reprs ------------------------------


async def test_secrets_never_saved(harness: Harness, tmp_path: Path) -> None:
    job_secret, config_secret = "job-s3cr3t-9f2c", "cfg-s3cr3t-41aa"
    if not harness.supports_env:
        # Runs that share this process's environment refuse env settings, and the
        # refusal does not quote the secrets.
        with pytest.raises(ValueError) as info:
            backend, job = harness.make(
                lines=["ok"],
                env={"JOB_TOKEN": SecretStr(job_secret)},
                config_env={"CFG_TOKEN": SecretStr(config_secret)},
            )
            await backend.submit(job)
        assert job_secret not in str(info.value) and config_secret not in str(info.value)
        backend, job = harness.make(lines=["ok"], env={"JOB_TOKEN": SecretStr(job_secret)})
        with pytest.raises(tether.ConfigError) as refused:
            await backend.submit(job)
        assert job_secret not in str(refused.value)
        return
    backend, job = harness.make(
        lines=["ok"],
        env={"JOB_TOKEN": SecretStr(job_secret), "PLAIN": "visible"},
        config_env={"CFG_TOKEN": SecretStr(config_secret)},
    )
    handle = await backend.submit(job)
    await handle.wait()
    path = await handle.save(tmp_path / "run.json")
    saved = path.read_text()
    assert "visible" in saved and "JOB_TOKEN" in saved
    texts = [saved, repr(handle), repr(job), repr(backend.config), str(handle.to_record())]
    if handle.run_dir is not None:
        files = [p for p in handle.run_dir.rglob("*") if p.is_file()]
        texts += [p.read_text(errors="replace") for p in files]
    for text in texts:
        assert job_secret not in text and config_secret not in text
    reloaded = await tether.load_handle(path)
    assert "JOB_TOKEN" not in reloaded.job.env  # the value is unknown, not faked


# 7. records carry a schema version; unknown/newer is a clear error ----------------


async def test_record_versions_and_corruption(harness: Harness, tmp_path: Path) -> None:
    backend, job = harness.make(lines=["v"])
    handle = await backend.submit(job)
    await handle.wait()
    path = await handle.save(tmp_path / "run.json")
    record = json.loads(path.read_text())
    assert record["format"] == "tether.handle" and record["version"] == 1

    newer = tmp_path / "newer.json"
    newer.write_text(json.dumps({**record, "version": 99}))
    with pytest.raises(RecordVersionError, match="newer"):
        await tether.load_handle(newer)

    truncated = tmp_path / "truncated.json"
    truncated.write_text(path.read_text()[: len(path.read_text()) // 2])
    with pytest.raises(RecordError, match="corrupt or truncated"):
        await tether.load_handle(truncated)

    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps({"hello": 1}))
    with pytest.raises(RecordError, match="not a tether handle"):
        await tether.load_handle(foreign)

    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({**record, "backend": "no-such-backend"}))
    with pytest.raises(tether.TetherError, match="no-such-backend"):
        await tether.load_handle(unknown)


# logs ---------------------------------------------------------------------------------


async def test_logs_and_follow(harness: Harness) -> None:
    backend, job = harness.make(lines=["one", "two", "three"], duration=0.9)
    handle = await backend.submit(job)
    followed = [line async for line in handle.logs(follow=True)]
    assert followed == ["one", "two", "three"]
    await handle.wait()
    assert [line async for line in handle.logs()] == ["one", "two", "three"]
    assert [line async for line in handle.logs("stderr")] == []


async def test_save_is_atomic_and_owner_only(harness: Harness, tmp_path: Path) -> None:
    backend, job = harness.make(lines=["a"])
    handle = await backend.submit(job)
    target = tmp_path / "h.json"
    target.write_text("old")
    os.chmod(target, 0o644)
    await handle.save(target)
    assert target.stat().st_mode & 0o777 == 0o600
    assert json.loads(target.read_text())["run_id"] == handle.run_id
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    await handle.wait()
