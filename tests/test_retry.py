"""Retries (issue 19): the policy, the wrapper over local and dummy, one handle for
every attempt (saved and re-attached mid-retry), cancel, logs, and the cache."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

import tether
from tether import (
    Backoff,
    CachedBackend,
    CachedConfig,
    ConfigError,
    DummyConfig,
    Job,
    LocalConfig,
    RetryConfig,
    RetryingBackend,
    RetryPolicy,
    RetryRunHandle,
    RunState,
    SQLiteStore,
)

from .conftest import run_python

pytestmark = pytest.mark.anyio

FAST = {"initial": 0.05, "factor": 2, "max": 0.2, "jitter": 0.5}


def flaky(counter: Path, succeed_on: int, *, sleep: float = 0.0, code: int = 1) -> Job:
    """A job that fails (exit ``code``) until its ``succeed_on``-th run, counting runs in
    ``counter``; each run sleeps ``sleep`` s first and prints which try it is."""
    command = (
        f"n=$(cat {counter} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {counter}; "
        f'echo "try $n"; sleep {sleep}; [ $n -ge {succeed_on} ] || exit {code}'
    )
    return Job(name="flaky", command=command)


def local(tmp_path: Path, **policy: Any) -> RetryingBackend:
    options = {"backoff": FAST, **policy}
    return RetryingBackend(LocalConfig(runs_dir=tmp_path / "runs").create(), RetryPolicy(**options))


async def wait_for(check: Any, deadline: float = 60.0) -> None:
    """Poll the async ``check`` until it is true (generous: a busy machine)."""
    end = time.monotonic() + deadline
    while not await check():
        assert time.monotonic() < end, "condition not reached in time"
        await anyio.sleep(0.05)


# -- the policy ----------------------------------------------------------------------


def test_backoff_grows_caps_and_jitters_below_the_cap() -> None:
    backoff = Backoff(initial=1, factor=3, max=20, jitter=0.25)
    rng = random.Random(7)
    for retry, base in ((1, 1), (2, 3), (3, 9), (4, 20), (30, 20)):
        delays = [backoff.delay(retry, rng) for _ in range(50)]
        assert all(0.75 * base - 1e-9 <= d <= base for d in delays), (retry, delays[:3])
        assert len(set(delays)) > 1  # jittered
    assert Backoff(initial=2, jitter=0).delay(1) == 2
    with pytest.raises(ValueError, match="start at 1"):
        backoff.delay(0)


def test_policy_decides_which_endings_are_retried() -> None:
    policy = RetryPolicy(retry_on=["failed", "LOST"], exit_codes=[75])
    failed = tether.RunResult(run_id="r", state=RunState.FAILED, exit_code=75)
    assert policy.should_retry(failed)
    assert not policy.should_retry(failed.model_copy(update={"exit_code": 1}))
    assert policy.should_retry(tether.RunResult(run_id="r", state=RunState.LOST))
    assert not policy.should_retry(tether.RunResult(run_id="r", state=RunState.TIMED_OUT))
    assert RetryPolicy(backoff=5).backoff.initial == 5


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"retry_on": ["CANCELLED"]}, "never retried"),
        ({"retry_on": ["LOST"], "exit_codes": [1]}, "add FAILED"),
        ({"retries": -1}, "greater than or equal"),
        ({"backoff": {"initial": 1, "jiter": 0.1}}, "jiter"),
    ],
)
def test_bad_policies_say_what_is_wrong(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RetryPolicy(**options)


def test_config_from_yaml_and_refusals(tmp_path: Path) -> None:
    path = tmp_path / "retry.yml"
    path.write_text(
        "type: retry\nbackend:\n  type: dummy\n  outcome: failed\nretries: 4\n"
        "retry_on: [FAILED, TIMED_OUT]\nbackoff: {initial: 2, max: 30}\n"
    )
    config = tether.load_config(path)
    assert isinstance(config, RetryConfig) and isinstance(config.backend, DummyConfig)
    assert config.policy == RetryPolicy(
        retries=4, retry_on=["FAILED", "TIMED_OUT"], backoff={"initial": 2, "max": 30}
    )
    assert isinstance(config.create(), RetryingBackend)
    assert config.cache_fields() == config.backend.cache_fields()  # the policy changes no result
    path.write_text("type: retry\nbackend: {type: dummy}\ntimeout: 120\n")
    with pytest.raises(ConfigError, match="go inside 'backend'"):
        tether.load_config(path)
    path.write_text(
        "type: retry\nbackend: {type: cached, backend: {type: dummy}, cache_failures: true}\n"
    )
    with pytest.raises(ConfigError, match="cache_failures"):
        tether.load_config(path)
    with pytest.raises(ConfigError, match="multiplies"):
        RetryingBackend(RetryConfig(backend=DummyConfig()).create())


# -- over the local backend ------------------------------------------------------------


async def test_local_job_failing_twice_succeeds_on_the_third_attempt(tmp_path: Path) -> None:
    counter = tmp_path / "count"
    backend = local(tmp_path, retries=3)
    handle = await backend.submit(flaky(counter, succeed_on=3))
    run_id = handle.run_id
    result = await handle.wait()
    assert result.ok and result.run_id == run_id == handle.run_id
    assert counter.read_text().strip() == "3"
    attempts = handle.attempts
    assert [(a.number, a.state) for a in attempts] == [
        (1, RunState.FAILED),
        (2, RunState.FAILED),
        (3, RunState.SUCCEEDED),
    ]
    assert attempts[0].reason and "exit code 1" in attempts[0].reason
    assert len({a.run_id for a in attempts}) == 3 and all(a.run_id for a in attempts)
    assert [line async for line in handle.logs()] == ["try 3"]  # the last attempt's
    assert await result.read_stdout() == "try 3\n"
    assert handle.current is not None and handle.current.run_id == attempts[-1].run_id
    # The record lists the attempts; a reload agrees, without running anything again.
    record = json.loads((await handle.save(tmp_path / "h.json")).read_text())
    assert [a["state"] for a in record["data"]["shared"]["attempts"]] == [
        "FAILED",
        "FAILED",
        "SUCCEEDED",
    ]
    again = await tether.load_handle(tmp_path / "h.json")
    assert isinstance(again, RetryRunHandle) and again.state is RunState.SUCCEEDED
    assert (await again.wait()).run_id == run_id and len(again.attempts) == 3
    assert counter.read_text().strip() == "3"


async def test_retries_used_up_end_with_the_last_failure(tmp_path: Path) -> None:
    counter = tmp_path / "count"
    handle = await local(tmp_path, retries=1).submit(flaky(counter, succeed_on=99, code=4))
    result = await handle.wait()
    assert result.state is RunState.FAILED and result.exit_code == 4
    assert result.error is not None and "after 2 attempts" in result.error
    assert len(handle.attempts) == 2 and counter.read_text().strip() == "2"


async def test_exit_code_filter_and_state_filter(tmp_path: Path) -> None:
    counter = tmp_path / "count"
    backend = local(tmp_path, retries=3, retry_on=["FAILED"], exit_codes=[75])
    handle = await backend.submit(flaky(counter, succeed_on=99, code=3))
    result = await handle.wait()
    assert result.state is RunState.FAILED and len(handle.attempts) == 1  # 3 is not retried
    handle = await backend.submit(flaky(tmp_path / "other", succeed_on=2, code=75))
    assert (await handle.wait()).ok and len(handle.attempts) == 2


async def test_per_job_policy_overrides_the_backend(tmp_path: Path) -> None:
    backend = local(tmp_path, retries=0)
    handle = await backend.submit(
        flaky(tmp_path / "count", succeed_on=2), policy=RetryPolicy(retries=1, backoff=FAST)
    )
    assert (await handle.wait()).ok and len(handle.attempts) == 2


async def test_reload_mid_retry_in_another_process_goes_on_with_the_count(
    tmp_path: Path,
) -> None:
    """Attempt 2 runs when the handle is saved; a fresh process loads it, waits for
    attempt 2, submits attempt 3 itself and returns the final result."""
    counter = tmp_path / "count"
    backend = local(tmp_path, retries=4)
    handle = await backend.submit(flaky(counter, succeed_on=3, sleep=2))

    async def second_running() -> bool:
        await handle.refresh()
        return handle.attempt == 2 and handle.attempts[-1].state is RunState.RUNNING

    await wait_for(second_running)
    path = await handle.save(tmp_path / "mid.json")
    # This process stops driving the run here: the other process must do the rest.
    seen = run_python(
        """
import json, sys, anyio, tether
async def main():
    handle = await tether.load_handle(sys.argv[1])
    at = handle.attempt
    result = await handle.wait(90)
    print(json.dumps({"at": at, "state": result.state.value, "run_id": result.run_id,
                      "attempts": [a.state.value for a in handle.attempts]}))
anyio.run(main)
""",
        str(path),
        timeout=120,
    )
    assert seen == {
        "at": 2,
        "state": "SUCCEEDED",
        "run_id": handle.run_id,
        "attempts": ["FAILED", "FAILED", "SUCCEEDED"],
    }
    assert counter.read_text().strip() == "3"
    # The first handle sees what the other process did, and starts nothing more.
    result = await handle.wait(30)
    assert result.ok and [a.number for a in handle.attempts] == [1, 2, 3]
    assert counter.read_text().strip() == "3"


async def test_two_handles_waiting_at_once_make_one_attempt_each_time(tmp_path: Path) -> None:
    counter = tmp_path / "count"
    handle = await local(tmp_path, retries=3).submit(flaky(counter, succeed_on=3, sleep=0.3))
    await handle.save(tmp_path / "h.json")
    other = await tether.load_handle(tmp_path / "h.json")
    results = []
    async with anyio.create_task_group() as group:
        for each in (handle, other):

            async def wait(h: tether.RunHandle = each) -> None:
                results.append(await h.wait(60))

            group.start_soon(wait)
    assert [r.state for r in results] == [RunState.SUCCEEDED] * 2
    assert counter.read_text().strip() == "3"


async def test_cancel_during_an_attempt_stops_every_further_one(tmp_path: Path) -> None:
    counter = tmp_path / "count"
    handle = await local(tmp_path, retries=5).submit(flaky(counter, succeed_on=99, sleep=30))

    async def running() -> bool:
        return await handle.refresh() is RunState.RUNNING and counter.exists()

    await wait_for(running)
    inner = handle.current
    with anyio.CancelScope() as scope:
        scope.cancel()
        await handle.cancel()  # shielded: completes although its caller is cancelled
    assert handle.state is RunState.CANCELLED
    await handle.cancel()  # idempotent
    assert inner is not None and inner.state is RunState.CANCELLED
    await anyio.sleep(0.5)
    assert (await handle.wait()).state is RunState.CANCELLED and len(handle.attempts) == 1
    assert counter.read_text().strip() == "1"


async def test_cancel_during_the_back_off_from_another_handle(tmp_path: Path) -> None:
    counter = tmp_path / "count"
    backend = local(tmp_path, retries=3, backoff={"initial": 30, "jitter": 0})
    handle = await backend.submit(flaky(counter, succeed_on=99))

    async def backing_off() -> bool:
        await handle.refresh()
        return handle.attempt == 2

    await wait_for(backing_off)
    await handle.save(tmp_path / "h.json")
    other = await tether.load_handle(tmp_path / "h.json")
    await other.cancel()
    result = await handle.wait(30)  # the first handle sees the cancel made elsewhere
    assert result.state is RunState.CANCELLED
    assert [a.state for a in handle.attempts] == [RunState.FAILED, RunState.CANCELLED]
    assert counter.read_text().strip() == "1"


async def test_follow_logs_across_attempts(tmp_path: Path) -> None:
    handle = await local(tmp_path, retries=2).submit(flaky(tmp_path / "count", succeed_on=3))
    with anyio.fail_after(60):
        lines = [line async for line in handle.logs(follow=True)]
    assert lines == ["try 1", "try 2", "try 3"]


async def test_find_gives_back_a_retried_run_after_its_submitter_died(tmp_path: Path) -> None:
    backend = local(tmp_path, retries=2)
    job = flaky(tmp_path / "count", succeed_on=2)
    handle = await backend.submit(job, run_id="chosen-run")
    found = await backend.find(job, "chosen-run")
    assert isinstance(found, RetryRunHandle) and found.run_id == handle.run_id == "chosen-run"
    assert (await found.wait()).ok and (await handle.wait()).ok
    assert (tmp_path / "count").read_text().strip() == "2"
    assert await backend.find(job, "never-submitted") is None


# -- over the dummy backend ------------------------------------------------------------


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_dummy_failing_on_purpose_is_retried_then_fails(tmp_path: Path) -> None:
    inner = DummyConfig(runs_dir=tmp_path / "runs", outcome="failed", exit_code=3, duration=0.1)
    backend = RetryConfig(backend=inner, retries=2, backoff=FAST).create()
    handle = await backend.submit(Job(name="dummy"))
    result = await handle.wait()
    assert result.state is RunState.FAILED and result.exit_code == 3
    assert [a.state for a in handle.attempts] == [RunState.FAILED] * 3
    assert all(a.reason and "simulated failure" in a.reason for a in handle.attempts)


async def test_dummy_lost_runs_are_retried_only_when_asked(tmp_path: Path) -> None:
    inner = DummyConfig(runs_dir=tmp_path / "runs", outcome="lost")
    backend = RetryConfig(backend=inner, retries=1, retry_on=["FAILED"], backoff=FAST).create()
    handle = await backend.submit(Job(name="lost"))
    assert (await handle.wait()).state is RunState.LOST and len(handle.attempts) == 1
    backend = RetryConfig(backend=inner, retries=1, retry_on=["LOST"], backoff=FAST).create()
    handle = await backend.submit(Job(name="lost"))
    assert (await handle.wait()).state is RunState.LOST and len(handle.attempts) == 2


# -- with the cache --------------------------------------------------------------------


async def test_cache_inside_records_only_the_final_success(tmp_path: Path) -> None:
    counter = tmp_path / "count"
    store = SQLiteStore(tmp_path / "cache.sqlite")
    job = flaky(counter, succeed_on=2).model_copy(update={"outputs": ["*.txt"]})
    job = job.model_copy(update={"command": f"{job.command} && echo made > out.txt"})
    cached = CachedBackend(LocalConfig(runs_dir=tmp_path / "runs").create(), store)
    backend = RetryingBackend(cached, RetryPolicy(retries=2, backoff=FAST))
    first = await backend.submit(job)
    assert (await first.wait()).ok and len(first.attempts) == 2
    assert len(list(store.entries())) == 1  # the failed attempt was never recorded
    again = await backend.submit(job)
    result = await again.wait()
    assert result.ok and len(again.attempts) == 1  # a hit: nothing ran
    assert isinstance(again.current, tether.CachedRunHandle) and again.current.hit
    assert [p.read_text() for p in result.outputs] == ["made\n"]
    assert counter.read_text().strip() == "2"


async def test_cache_around_retries_is_refused_clearly(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "cache.sqlite")
    backend = CachedBackend(local(tmp_path), store)
    with pytest.raises(ConfigError, match=r"RetryingBackend\(CachedBackend\(inner\)\)"):
        await backend.submit(Job(command="true"))
    config = CachedConfig(backend=RetryConfig(backend=DummyConfig()))
    with pytest.raises(ConfigError, match="put the cache inside"):
        await config.create().submit(Job(command="true"))
