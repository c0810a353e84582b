"""The ``tether`` command, driven through the real console script in subprocesses.

Every test points ``TETHER_HOME`` at its own temporary folder, so run folders
land in ``<tmp>/home/runs``.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .cli_support import CLI, TETHER, one_error_line

ROOT = Path(__file__).resolve().parents[1]
HELLO = ROOT / "examples" / "hello" / "job.yml"


SLEEP_JOB = "name: sleeper\ncommand: 'echo started; sleep 30'\n"


# -- tether run ------------------------------------------------------------------------


def test_run_hello_from_repo_root(cli: CLI) -> None:
    proc = cli("run", "examples/hello/job.yml", cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "hello from tether" in proc.stdout
    assert "\r" not in proc.stderr  # not a terminal: plain lines only
    summary = proc.stderr.splitlines()[-1]
    assert "SUCCEEDED" in summary and "exit code 0" in summary
    [run_dir] = cli.run_dirs()
    assert run_dir.name in summary and str(run_dir) in summary
    greeting = run_dir / "greeting.txt"
    assert greeting.read_text().strip() in proc.stdout


def test_run_on_a_terminal_shows_a_live_status_line(cli: CLI) -> None:
    job = cli.write("slow.yml", "name: slow\ncommand: 'sleep 1.2; echo done'\n")
    code, text, out = cli.on_terminal("run", job)
    assert code == 0 and out == "done\n"
    # rich draws a spinner line, redraws it in place, then erases it before the summary.
    live, _, summary = text.rpartition("\x1b[2K")
    assert live.count("RUNNING") >= 2 and live.count("\r\x1b[2K") >= 2
    assert "\x1b[?25h" in live  # the cursor is shown again
    assert "SUCCEEDED" in summary and summary.count("\n") == 1


def test_run_json_is_the_only_stdout(cli: CLI) -> None:
    proc = cli("run", HELLO, "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["state"] == "SUCCEEDED"
    assert result["exit_code"] == 0
    [output] = result["outputs"]
    assert Path(output).name == "greeting.txt" and Path(output).is_file()
    assert "hello from tether" in Path(result["stdout"]).read_text()


def test_failing_job_exits_1_with_reason(cli: CLI) -> None:
    job = cli.write("fail.yml", "name: fail\ncommand: 'echo partial; echo boom >&2; exit 3'\n")
    proc = cli("run", job)
    assert proc.returncode == 1
    assert proc.stdout == "partial\n"
    summary = proc.stderr.splitlines()[-1]
    assert "FAILED" in summary and "exit code 3" in summary and "boom" in summary


def test_unknown_command_ends_failed_with_reason(cli: CLI) -> None:
    job = cli.write("nf.yml", "name: nf\ncommand: no-such-command-tether-test\n")
    proc = cli("run", job)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    summary = proc.stderr.splitlines()[-1]
    assert "FAILED" in summary and "127" in summary and "not found" in summary


def test_backend_config_file_beats_job_file_backend(cli: CLI) -> None:
    job = cli.write(
        "job.yml",
        "name: pick\ncommand: 'echo local'\nbackend:\n  type: dummy\n  stdout: job-file\n",
    )
    proc = cli("run", job)
    assert (proc.returncode, proc.stdout) == (0, "job-file\n"), proc.stderr
    config = cli.write("dummy.yml", "type: dummy\nstdout: config-file\n")
    proc = cli("run", job, "--backend-config", config)
    assert (proc.returncode, proc.stdout) == (0, "config-file\n"), proc.stderr


def test_run_interrupted_cancels_the_run(cli: CLI) -> None:
    job = cli.write("sleep.yml", SLEEP_JOB)
    with subprocess.Popen(
        [TETHER, "run", str(job)],
        cwd=cli.tmp,
        env=cli.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        # Whatever launched the tests (a CI runner, `nohup`, a background job) may
        # ignore SIGINT, and an ignored signal stays ignored across exec.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    ) as proc:
        deadline = time.monotonic() + 20
        while not list((cli.home / "runs").glob("*/handle.json")):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "tether run never started its run"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    [run_dir] = cli.run_dirs()
    assert json.loads((run_dir / "exit.json").read_text())["reason"] == "cancelled"


# -- submit / status / wait / logs / cancel ---------------------------------------------


def test_handle_commands_flow(cli: CLI) -> None:
    job = cli.write("sleep.yml", SLEEP_JOB)
    handle = cli.tmp / "h.json"

    proc = cli("submit", job, "--handle", handle)
    assert proc.returncode == 0, proc.stderr
    run_id = proc.stdout.strip()
    assert run_id.startswith("sleeper-") and handle.is_file()

    proc = cli("status", handle)
    assert (proc.returncode, proc.stdout.strip()) == (0, f"{run_id}: RUNNING")
    proc = cli("status", handle, "--json")
    assert json.loads(proc.stdout) == {"run_id": run_id, "state": "RUNNING"}

    proc = cli("wait", handle, "--timeout", "0.5")
    assert proc.returncode == 3, proc.stderr
    assert "still RUNNING" in proc.stderr and proc.stdout == ""

    proc = cli("logs", handle)
    assert (proc.returncode, proc.stdout) == (0, "started\n")

    proc = cli("cancel", handle)
    assert proc.returncode == 0, proc.stderr
    assert f"{run_id}: CANCELLED" in proc.stdout

    proc = cli("status", handle)
    assert proc.returncode == 1 and f"{run_id}: CANCELLED" in proc.stdout
    proc = cli("wait", handle, "--json")
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["state"] == "CANCELLED"
    proc = cli("cancel", handle)  # idempotent
    assert proc.returncode == 0 and "CANCELLED" in proc.stdout


def test_submit_returns_at_once_when_its_output_is_a_pipe(cli: CLI) -> None:
    job = cli.write("short.yml", "name: short\ncommand: 'sleep 3'\n")
    started = time.monotonic()
    proc = subprocess.run(
        [TETHER, "submit", str(job), "--handle", str(cli.tmp / "h.json")],
        env=cli.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - started < 2.5


def test_logs_follow_until_the_run_ends(cli: CLI) -> None:
    job = cli.write(
        "count.yml",
        "name: count\ncommand: 'for i in 1 2 3; do echo line$i; echo err$i >&2; sleep 0.2; done'\n",
    )
    handle = cli.tmp / "h.json"
    assert cli("submit", job, "--handle", handle).returncode == 0
    proc = cli("logs", "-f", handle)
    assert (proc.returncode, proc.stdout) == (0, "line1\nline2\nline3\n")
    proc = cli("logs", handle, "--stderr")
    assert (proc.returncode, proc.stdout) == (0, "err1\nerr2\nerr3\n")
    proc = cli("wait", handle)
    assert proc.returncode == 0 and "SUCCEEDED" in proc.stdout


def test_unsavable_handle_cancels_the_run(cli: CLI) -> None:
    job = cli.write("sleep.yml", SLEEP_JOB)
    line = one_error_line(cli("submit", job, "--handle", cli.tmp / "no-dir" / "h.json"))
    assert "Cannot save handle to" in line and "cancelled" in line
    [run_dir] = cli.run_dirs()
    assert json.loads((run_dir / "exit.json").read_text())["reason"] == "cancelled"


# -- errors: one line, exit 2 ------------------------------------------------------------


def test_invalid_yaml_names_file_and_line(cli: CLI) -> None:
    job = cli.write("bad.yml", "name: bad\ncommand: [unclosed\n")
    line = one_error_line(cli("run", job))
    assert "bad.yml:3" in line and "invalid YAML" in line


def test_unknown_field_is_named(cli: CLI) -> None:
    job = cli.write("typo.yml", "name: typo\ncommand: 'true'\ncomand: 'true'\n")
    line = one_error_line(cli("run", job))
    assert "typo.yml:3" in line and "comand" in line and "unknown field" in line


def test_multi_line_config_error_prefixes_every_line(cli: CLI) -> None:
    job = cli.write(
        "two.yml", "name: two\ncommand: 'true'\nbackend:\n  type: local\n  timeout: 5\n  x: 1\n"
    )
    proc = cli("run", job)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 2
    assert all(line.startswith("tether: error: ") and "two.yml:" in line for line in lines)
    assert "backend.timeout" in lines[0] and "backend.x" in lines[1]


def test_corrupt_handle_file(cli: CLI) -> None:
    handle = cli.write("h.json", '{"format": "tether.handle", "vers')
    line = one_error_line(cli("status", handle))
    assert "h.json" in line and "corrupt" in line


def test_newer_handle_version(cli: CLI) -> None:
    handle = cli.write("h.json", json.dumps({"format": "tether.handle", "version": 99}))
    line = one_error_line(cli("wait", handle))
    assert "version 99" in line


@pytest.mark.parametrize(
    "args",
    [
        ("run", "missing.yml"),
        ("submit", "missing.yml", "--handle", "h.json"),
        ("status", "missing.json"),
        ("cancel", "missing.json"),
        ("logs", "missing.json"),
        ("run", HELLO, "--backend-config", "missing.yml"),
    ],
)
def test_missing_file(cli: CLI, args: tuple[str, ...]) -> None:
    line = one_error_line(cli(*args))
    assert "missing." in line and "does not exist" in line


def test_debug_shows_the_traceback(cli: CLI) -> None:
    proc = cli("--debug", "status", "missing.json")
    assert proc.returncode == 2 and "Traceback" in proc.stderr
    proc = cli("status", "missing.json", "--debug")
    assert proc.returncode == 2 and "Traceback" in proc.stderr


@pytest.mark.parametrize(
    "args", [(), ("frobnicate",), ("wait", "h.json", "--timeout", "-1"), ("submit", "job.yml")]
)
def test_usage_errors_exit_2(cli: CLI, args: tuple[str, ...]) -> None:
    proc = cli(*args)
    assert proc.returncode == 2 and "usage: tether" in proc.stderr


def test_python_m_tether_and_help_epilog(cli: CLI) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tether", "--help"],
        env=cli.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0
    assert "exit status:" in proc.stdout and "130" in proc.stdout
