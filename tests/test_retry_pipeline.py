"""Retried pipeline steps (issue 19): the policy in Python and YAML, attempts in the
journal, and a pipeline killed during attempt 2 that resumes at attempt 2."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

from tether import ConfigError, Job, LocalConfig, Pipeline, RetryPolicy, Step
from tether.pipelines.journal import read
from tether.pipelines.spec import load_pipeline

pytestmark = pytest.mark.anyio

FAST = {"initial": 0.05, "factor": 2, "max": 0.2}


def counting(counter: Path, succeed_on: int, sleep: float = 0.0) -> str:
    """A command that fails until its ``succeed_on``-th run (runs counted in ``counter``)."""
    return (
        f"n=$(cat {counter} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {counter}; "
        f"[ $n -ge {succeed_on} ] || exit 1; sleep {sleep}"
    )


async def test_step_retry_policy_and_attempts_in_journal(tmp_path: Path) -> None:
    counter, state = tmp_path / "count", tmp_path / "state.jsonl"
    step = Step(
        "sim",
        Job(command=counting(counter, 3)),
        backend=LocalConfig(runs_dir=tmp_path / "runs"),
        retry=RetryPolicy(retries=3, backoff=FAST),
    )
    result = await Pipeline([step], name="p").run(state=state)
    assert result.success, result.steps["sim"].reason
    run = result.steps["sim"].runs[0]
    assert run.attempts == 3 and counter.read_text().strip() == "3"
    member = read(state).steps["sim"].members[0]
    assert [a["state"] for a in member.attempts] == ["FAILED", "FAILED", "SUCCEEDED"]
    # A finished retried step is skipped by a rerun: nothing runs again.
    again = await Pipeline([step], name="p").run(state=state)
    assert again.success and again.steps["sim"].resumed
    assert counter.read_text().strip() == "3"


async def test_step_without_retry_fails_at_once(tmp_path: Path) -> None:
    counter = tmp_path / "count"
    step = Step("sim", Job(command=counting(counter, 2)), backend=LocalConfig())
    result = await Pipeline([step], name="p").run()
    assert not result.success and counter.read_text().strip() == "1"
    assert result.steps["sim"].runs[0].attempts is None


def test_bad_step_retry_options_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match=r"step 'sim': invalid retry policy: retry_on"):
        Step("sim", Job(command="true"), retry={"retry_on": ["CANCELLED"]})
    with pytest.raises(ConfigError, match="number of retries"):
        Step("sim", Job(command="true"), retry="often")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="reruns a job"):
        Step("post", processor="noop", depends_on="sim", retry=2)


PIPELINE = """\
name: flaky
state: flaky.state.jsonl
backend: {{type: local, runs_dir: {runs}}}
steps:
  - name: sim
    job: {{command: "{command}"}}
    retry: {{retries: 3, backoff: {{initial: 0.05, max: 0.2}}, retry_on: [FAILED]}}
"""


async def test_pipeline_killed_during_attempt_2_resumes_at_attempt_2(tmp_path: Path) -> None:
    counter = tmp_path / "count"
    # Attempt 1 fails at once; attempt 2 runs 3 s, then succeeds.
    command = counting(counter, 2, sleep=3)
    path = tmp_path / "flaky.yml"
    path.write_text(PIPELINE.format(runs=tmp_path / "runs", command=command))
    state = tmp_path / "flaky.state.jsonl"
    proc = await anyio.open_process(
        [sys.executable, "-m", "tether", "pipeline", "run", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:  # until attempt 2 runs and the journal knows it
            assert proc.returncode is None, "the pipeline ended before attempt 2 ran"
            member = read(state).steps.get("sim")
            attempts = member.members[0].attempts if member and member.members else []
            started = len(attempts) == 2 and attempts[1]["run_id"] and counter.exists()
            if started and counter.read_text().strip() == "2":
                break
            assert time.monotonic() < deadline, "attempt 2 never started"
            await anyio.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)  # the pipeline dies; attempt 2 (detached) goes on
    finally:
        with anyio.CancelScope(shield=True):
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
    loaded = load_pipeline(path)
    result = await loaded.pipeline.run(state=loaded.state)
    assert result.success, result.steps["sim"].reason
    run = result.steps["sim"].runs[0]
    assert run.origin == "reattached" and run.attempts == 2
    assert counter.read_text().strip() == "2"  # attempt 2 was re-attached, not run again
    member = read(state).steps["sim"].members[0]
    assert [a["number"] for a in member.attempts] == [1, 2]
    assert [a["state"] for a in member.attempts] == ["FAILED", "SUCCEEDED"]
    assert json.loads(json.dumps(member.handle))["backend"] == "retry"
