"""``tether pipeline run|status|validate`` through the real console script."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

from tether.pipelines import journal

from .cli_support import CLI, TETHER, one_error_line

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "pipeline" / "pipeline.yml"


def _counting_pipeline(
    cli: CLI, *, fail: bool = False, slow: float = 0.0, hold: Path | None = None
) -> Path:
    """Three steps that each append a line to <tmp>/effects/<step>, so runs can be counted.

    The first sleeps ``slow`` seconds, or with ``hold`` waits (30 s at most) until
    that file exists: a test that must act while it runs says when it is done.
    """
    effects = cli.tmp / "effects"
    effects.mkdir(exist_ok=True)
    last = "exit 3" if fail else "true"
    if hold is not None:
        slow_part = f"for i in $(seq 600); do [ -e {hold} ] && break; sleep 0.05; done"
    else:
        slow_part = f"sleep {slow}"
    return cli.write(
        "p.yml",
        f"""\
name: counted
backend: {{type: local}}
steps:
  - name: first
    job: {{command: "echo x >> {effects}/first; {slow_part}; echo one > one.txt",
           outputs: [one.txt]}}
  - name: second
    inputs_from: [first]
    job: {{command: "echo x >> {effects}/second; cat one.txt > two.txt; {last}",
           outputs: [two.txt]}}
  - name: side
    job: {{command: "echo x >> {effects}/side"}}
""",
    )


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # whatever the launcher ignored


def _started(
    cli: CLI, pipeline: Path, state: Path, *, stderr: int = subprocess.DEVNULL
) -> subprocess.Popen[bytes]:
    """``tether pipeline run`` in the background, once its first step has started."""
    proc = subprocess.Popen(
        [TETHER, "pipeline", "run", str(pipeline), "--state", str(state)],
        cwd=cli.tmp,
        env=cli.env,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        preexec_fn=_default_sigint,
    )
    deadline = time.monotonic() + 20
    while _count(cli, "first") == 0:
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("the pipeline's first step never started")
        time.sleep(0.05)
    return proc


def _count(cli: CLI, step: str) -> int:
    path = cli.tmp / "effects" / step
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_validate_prints_the_steps_in_start_order(cli: CLI) -> None:
    proc = cli("pipeline", "validate", EXAMPLE)
    assert proc.returncode == 0, proc.stderr
    assert "valid pipeline 'wave-demo', 3 steps: grid, simulate, summary" in proc.stdout


def test_validate_errors_are_one_line_with_file_and_line(cli: CLI) -> None:
    bad = cli.write("bad.yml", "steps:\n  - name: a\n    job: {command: ls}\n    colour: red\n")
    line = one_error_line(cli("pipeline", "validate", bad))
    assert f"{bad}:4: steps.0.colour: unknown field" in line

    cycle = cli.write(
        "cycle.yml",
        "steps:\n"
        "  - {name: a, job: {command: ls}, depends_on: [c]}\n"
        "  - {name: b, job: {command: ls}, depends_on: [a]}\n"
        "  - {name: c, job: {command: ls}, depends_on: [b]}\n",
    )
    line = one_error_line(cli("pipeline", "validate", cycle))
    assert "cycle" in line and "a -> c -> b -> a" in line

    unknown = cli.write(
        "unknown.yml", "steps:\n  - {name: a, job: {command: ls}, depends_on: [zz]}\n"
    )
    line = one_error_line(cli("pipeline", "validate", unknown))
    assert "'zz', which is not a step" in line

    job_error = cli.write("job.yml", "steps:\n  - name: a\n    job:\n      command: []\n")
    line = one_error_line(cli("pipeline", "validate", job_error))
    assert f"{job_error}:4: steps.0.job.command" in line

    backend = cli.write(
        "be.yml", "steps:\n  - {name: a, job: {command: ls}, backend: {type: nope}}\n"
    )
    assert "Unknown backend type 'nope'" in one_error_line(cli("pipeline", "run", backend))


def test_run_the_example_then_resume_skips_everything(cli: CLI) -> None:
    state = cli.tmp / "s.jsonl"
    proc = cli("pipeline", "run", EXAMPLE, "--state", state)
    assert proc.returncode == 0, proc.stderr
    assert "pipeline wave-demo succeeded" in proc.stdout
    summary = next((cli.home / "runs").glob("summary-*/summary.txt")).read_text()
    assert summary.splitlines() == ["wind=5 hs=0.10", "wind=10 hs=0.21", "wind=20 hs=0.42"] or (
        summary.count("wind=") == 3
    )
    archives = sorted((cli.home / "runs").glob("simulate-*/archive.zip"))
    assert len(archives) == 3
    runs_before = sorted(p.name for p in (cli.home / "runs").iterdir())

    again = cli("pipeline", "run", EXAMPLE, "--state", state)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("finished in an earlier run") == 3
    assert sorted(p.name for p in (cli.home / "runs").iterdir()) == runs_before

    status = cli("pipeline", "status", state, "--json")
    assert status.returncode == 0, status.stderr
    info = json.loads(status.stdout)
    assert info["pipeline"] == "wave-demo" and info["running"] is False
    assert {name: step["state"] for name, step in info["steps"].items()} == {
        "grid": "SUCCEEDED",
        "simulate": "SUCCEEDED",
        "summary": "SUCCEEDED",
    }
    assert [run["state"] for run in info["steps"]["simulate"]["runs"]] == ["SUCCEEDED"] * 3


def test_a_failed_step_exits_1_and_a_fixed_rerun_runs_only_what_failed(cli: CLI) -> None:
    pipeline = _counting_pipeline(cli, fail=True)
    state = cli.tmp / "state.jsonl"
    proc = cli("pipeline", "run", pipeline, "--state", state, "--keep-going")
    assert proc.returncode == 1
    assert "second" in proc.stdout and "FAILED" in proc.stdout and "exit code 3" in proc.stdout
    assert "pipeline counted did not succeed (second)" in proc.stdout
    assert "tether: resume with `tether pipeline run" in proc.stderr
    assert (_count(cli, "first"), _count(cli, "second"), _count(cli, "side")) == (1, 1, 1)

    status = cli("pipeline", "status", state)
    assert status.returncode == 1
    assert "second  FAILED" in status.stdout

    _counting_pipeline(cli, fail=False)  # fix the step
    again = cli("pipeline", "run", pipeline, "--state", state)
    assert again.returncode == 0, again.stderr
    assert (_count(cli, "first"), _count(cli, "second"), _count(cli, "side")) == (1, 2, 1)


def test_fail_fast_skips_what_is_left_and_keep_going_runs_it(cli: CLI) -> None:
    broken = cli.write(
        "ff.yml",
        "steps:\n"
        "  - {name: bad, job: {command: 'exit 4'}}\n"
        "  - {name: after, depends_on: [bad], job: {command: 'true'}}\n",
    )
    proc = cli("pipeline", "run", broken, "--json")
    assert proc.returncode == 1
    result = json.loads(proc.stdout)  # --json: nothing else on stdout
    assert result["success"] is False and result["run_success"] is False
    assert result["steps"]["after"]["state"] == "SKIPPED"
    assert result["steps"]["after"]["reason"] in (
        "upstream step 'bad' FAILED",
        "fail-fast: step 'bad' failed",
    )


def test_fresh_runs_every_step_again(cli: CLI) -> None:
    pipeline = _counting_pipeline(cli)
    state = cli.tmp / "state.jsonl"
    assert cli("pipeline", "run", pipeline, "--state", state).returncode == 0
    assert cli("pipeline", "run", pipeline, "--state", state).returncode == 0
    assert _count(cli, "first") == 1
    assert cli("pipeline", "run", pipeline, "--state", state, "--fresh").returncode == 0
    assert _count(cli, "first") == 2


def test_default_state_file_sits_next_to_the_pipeline_file(cli: CLI) -> None:
    pipeline = _counting_pipeline(cli)
    assert cli("pipeline", "run", pipeline).returncode == 0
    assert (cli.tmp / "p.state.jsonl").is_file()
    assert (cli.tmp / "p.state.jsonl").stat().st_mode & 0o777 == 0o600


def test_default_state_file_of_a_pipeline_in_a_folder_sits_next_to_it(cli: CLI) -> None:
    """``tether pipeline run sub/p.yml`` writes sub/p.state.jsonl (not sub/sub/…), so
    the documented ``tether pipeline status sub/p.state.jsonl`` works."""
    pipeline = _counting_pipeline(cli)
    (cli.tmp / "sub").mkdir()
    pipeline.rename(cli.tmp / "sub" / "p.yml")
    assert cli("pipeline", "run", "sub/p.yml").returncode == 0
    assert (cli.tmp / "sub" / "p.state.jsonl").is_file()
    assert not (cli.tmp / "sub" / "sub").exists()
    status = cli("pipeline", "status", "sub/p.state.jsonl")
    assert status.returncode == 0, status.stderr


def test_ctrl_c_says_what_was_cancelled_and_how_to_resume(cli: CLI) -> None:
    pipeline = _counting_pipeline(cli, slow=30.0)
    state = cli.tmp / "state.jsonl"
    with _started(cli, pipeline, state, stderr=subprocess.PIPE) as proc:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    lines = err.decode().splitlines()
    assert proc.returncode == 130
    (cancelled,) = [line for line in lines if line.startswith("tether: interrupted: cancelled ")]
    assert "first" in cancelled.split("cancelled ", 1)[1].split(", ")
    assert f"tether: resume with `tether pipeline run {pipeline}` (state file {state})" in lines
    assert "Traceback" not in err.decode()
    status = cli("pipeline", "status", state)
    assert "Traceback" not in status.stderr and "first" in status.stdout


def test_sigkilled_pipeline_resumes_and_runs_each_step_once(cli: CLI) -> None:
    pipeline = _counting_pipeline(cli, slow=2.0)
    state = cli.tmp / "state.jsonl"
    with _started(cli, pipeline, state) as proc:
        time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    status = cli("pipeline", "status", state)
    # Not finished and nobody runs it (exit 1), though its run outlived the pipeline.
    assert status.returncode == 1
    assert "not running" in status.stdout
    assert "first  RUNNING" in status.stdout

    again = cli("pipeline", "run", pipeline, "--state", state)
    assert again.returncode == 0, again.stderr
    assert (_count(cli, "first"), _count(cli, "second"), _count(cli, "side")) == (1, 1, 1)
    replay = journal.read(state)
    assert {name: step.state for name, step in replay.steps.items()} == {
        "first": "SUCCEEDED",
        "second": "SUCCEEDED",
        "side": "SUCCEEDED",
    }


def test_a_state_file_in_use_is_refused(cli: CLI) -> None:
    hold = cli.tmp / "hold"  # the first step runs until the checks are done
    pipeline = _counting_pipeline(cli, hold=hold)
    state = cli.tmp / "state.jsonl"
    with _started(cli, pipeline, state) as first:
        try:
            fresh = one_error_line(cli("pipeline", "run", pipeline, "--state", state, "--fresh"))
            assert "--fresh cannot start over while it runs" in fresh
            line = one_error_line(cli("pipeline", "run", pipeline, "--state", state))
            assert "in use by another running pipeline" in line
            assert "running now" in cli("pipeline", "status", state).stdout
        finally:
            hold.touch()
        assert first.wait(timeout=30) == 0
    assert _count(cli, "first") == 1


def test_status_of_a_missing_file_is_a_usage_error(cli: CLI) -> None:
    line = one_error_line(cli("pipeline", "status", cli.tmp / "nope.jsonl"))
    assert "No pipeline state file" in line


def test_run_on_a_terminal_draws_a_live_table(cli: CLI) -> None:
    pipeline = _counting_pipeline(cli, slow=0.6)
    code, text, out = cli.on_terminal("pipeline", "run", pipeline)
    assert code == 0, out
    assert "pipeline" in text and "first" in text and "RUNNING" in text
    assert "SUCCEEDED" in text
    assert "pipeline counted succeeded" in out
