"""A pipeline SIGKILLed at random points and resumed runs every run exactly once.

The pipeline (``pipeline_crash_support.py``: 20 steps, 28 runs on the local backend)
runs in a subprocess that is killed with SIGKILL after random delays (seeded and
printed: ``pytest -k seed-7 -s`` replays a scenario's delays, ``CRASH_SEEDS=1,2,3``
sweeps other seeds), restarted each time, and finally left to finish. Its local runs
are detached: they outlive each killed attempt, and the next one must re-attach to
them (saved handles) or find them by run id (killed between journaling the id and
the handle), never start them again. Each run appends a line to its own side-effect
file, so a run that happened twice shows.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

from tether.pipelines import journal

from . import pipeline_crash_support as support

SUPPORT = Path(__file__).with_name("pipeline_crash_support.py")
#: Each seed is one scenario of kill delays; CRASH_SEEDS=1,2,3 runs others (a sweep).
SEEDS = tuple(int(s) for s in os.environ.get("CRASH_SEEDS", "7,2024,31337").split(","))


def _start(state: Path, work: Path, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, str(SUPPORT), *extra, str(state), str(work)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _effects(work: Path) -> dict[str, int]:
    """Side-effect file → how many runs wrote to it."""
    return {
        path.stem: len(path.read_text().splitlines())
        for path in sorted((work / "effects").glob("*.log"))
    }


def _processes_in(work: Path) -> list[int]:
    """Live processes (supervisors, runs) whose command line mentions ``work``."""
    needle = str(work).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            status = (entry / "stat").read_bytes()
        except OSError:
            continue
        zombie = status[status.rindex(b")") + 2 :].startswith(b"Z")
        if needle in cmdline and not zombie:
            found.append(int(entry.name))
    return found


def _no_stray_processes(work: Path) -> None:
    """Wait a moment for supervisors that recorded their exit to leave; then kill and fail."""
    deadline = time.monotonic() + 3
    while (left := _processes_in(work)) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in left:  # started (through the pipeline) by this test: leave nothing behind
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not left, f"processes left running: {left}"


def _replay_all_succeeded(state: Path, expected_runs: dict[str, int]) -> None:
    replay = journal.read(state)
    assert replay.name == support.NAME
    states = {name: step.state for name, step in replay.steps.items()}
    assert states == dict.fromkeys(expected_runs, "SUCCEEDED"), states
    for name, count in expected_runs.items():
        members = replay.steps[name].members
        assert sorted(members) == list(range(count)), (name, members)
        for member in members.values():
            assert member.result is not None and member.result["state"] == "SUCCEEDED"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("seed", SEEDS, ids=lambda seed: f"seed-{seed}")
def test_sigkilled_pipeline_resumes_and_runs_everything_once(tmp_path: Path, seed: int) -> None:
    state, work = tmp_path / "state.jsonl", tmp_path / "work"
    steps = support.build(state, work).steps
    rng = random.Random(seed)
    # An attempt takes ~0.45 s to import tether and about 1.4 s more to run the lot;
    # resumed attempts have less to do, so the later delays also land in re-attaching.
    delays = [round(rng.uniform(0.3, 1.5), 3) for _ in range(rng.randint(4, 6))]
    print(f"seed {seed}: SIGKILL after {delays} s, then a last attempt to the end")
    logs: list[Path] = []
    try:
        for attempt, delay in enumerate(delays):
            logs.append(tmp_path / f"attempt-{attempt}.log")
            proc = _start(state, work, logs[-1])
            try:
                proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
            proc.wait()
            if state.exists():  # kept for a post-mortem (the last attempt compacts it)
                shutil.copy(state, tmp_path / f"state-after-{attempt}.jsonl")
        logs.append(tmp_path / "attempt-last.log")
        proc = _start(state, work, logs[-1])
        code = proc.wait(timeout=40)
        output = "\n".join(f"--- {log.name}\n{log.read_text()}" for log in logs)
        print(output)
        assert code == 0, f"the last attempt exited {code}:\n{output}"
    finally:
        _no_stray_processes(work)

    effects = _effects(work)
    assert sorted(effects) == support.expected_effects()
    twice = {tag: n for tag, n in effects.items() if n != 1}
    assert not twice, f"runs that did not happen exactly once: {twice}\n{output}"
    runs = {name: len(step.members()) for name, step in steps.items()}
    _replay_all_succeeded(state, runs)

    # One more resume, in this process: nothing runs again, every value is reloaded.
    result = anyio.run(support.run, state, work)
    assert result.success
    assert all(step.resumed for step in result.steps.values())
    support.check_outputs(result, work)
    assert _effects(work) == effects
    # (A killed attempt may not have printed all its events: the log is a hint only.)
    seen = {word for log in logs for word in ("(reattached)", "(found)") if word in log.read_text()}
    print(f"seed {seed}: resumed runs were {sorted(seen) or 'none'}")


def _kill_after_submit(state: Path, work: Path, log: Path) -> str:
    """Run the find pipeline until its first run started, then SIGKILL it there."""
    proc = _start(state, work, log, "--stall")
    marker = work / support.SUBMITTED
    deadline = time.monotonic() + 20
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert marker.exists(), f"the run was never submitted:\n{log.read_text()}"
    return marker.read_text()


@pytest.mark.timeout(60)
def test_run_started_before_its_handle_was_journaled_is_found(tmp_path: Path) -> None:
    state, work = tmp_path / "state.jsonl", tmp_path / "work"
    try:
        run_id = _kill_after_submit(state, work, tmp_path / "killed.log")
        member = journal.read(state).steps["produce"].members[0]
        assert (member.run_id, member.handle, member.result) == (run_id, None, None)

        result = support.build_find(state, work).run_sync()
    finally:
        _no_stray_processes(work)
    assert result.success
    run = result.steps["produce"].runs[0]
    assert (run.origin, run.run_id) == ("found", run_id)
    assert result.value("produce") == 21
    assert result.value("double") == 42
    assert _effects(work) == {"produce": 1, "double": 1}


@pytest.mark.timeout(60)
def test_found_run_is_not_run_again_by_a_later_resume(tmp_path: Path) -> None:
    state, work = tmp_path / "state.jsonl", tmp_path / "work"
    try:
        _kill_after_submit(state, work, tmp_path / "killed.log")
        (work / support.FAIL_DOUBLE).touch()
        first = support.build_find(state, work).run_sync(fail_fast=False)
        assert first.steps["produce"].runs[0].origin == "found"
        assert first.steps["double"].state == "FAILED"

        (work / support.FAIL_DOUBLE).unlink()
        second = support.build_find(state, work).run_sync()
    finally:
        _no_stray_processes(work)
    assert second.success
    assert second.value("double") == 42
    # produce finished in the first resume: it must stand, not run a second time
    # (today: produce runs twice, its second run "submitted", not "recorded").
    assert _effects(work) == {"produce": 1, "double": 2}
    assert second.steps["produce"].resumed


@pytest.mark.timeout(60)
def test_found_run_value_is_reloaded_by_a_later_resume(tmp_path: Path) -> None:
    state, work = tmp_path / "state.jsonl", tmp_path / "work"
    try:
        _kill_after_submit(state, work, tmp_path / "killed.log")
        assert support.build_find(state, work).run_sync().success
        again = support.build_find(state, work).run_sync()
    finally:
        _no_stray_processes(work)
    assert again.success and again.steps["produce"].resumed
    assert _effects(work) == {"produce": 1, "double": 1}
    assert again.value("double") == 42
    assert again.value("produce") == 21  # today: None (its handle was never journaled)
