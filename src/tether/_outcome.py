"""Results of supervised runs: what the run supervisor's ``exit.json`` says, as a RunResult.

The local backend's runs and the Slurm backend's (whose nodes run the same
supervisor) record the same outcome; each backend decides what the reason means
(a cancel, a timeout) and this module builds the rest: the failure's words, the
collected outputs, and a ``Call``'s value or exception from its outcome file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import _worker as worker
from ._runs import collect_outputs
from ._runs import failure_reason as failure_reason  # its home before; backends use it
from .call import Call, outcome_fields
from .job import Job
from .result import RunResult, RunState, utc_time


def supervised_result(
    data: dict[str, Any],
    state: RunState,
    error: str | None,
    *,
    run_id: str,
    job: Job,
    run_dir: Path,
    cwd: Path,
    started: float,
    stdout: Path | None,
    stderr: Path | None,
) -> RunResult:
    """The result of a run whose outcome ``data`` the backend read as ``state``/``error``.

    Outputs are collected from ``cwd``; a ``Call`` that exited has its own verdict
    (value or exception) in its outcome file, which overrides the exit status.
    """
    outputs: list[Path] = []
    if job.outputs and run_dir.is_dir():
        outputs = collect_outputs(job.outputs, cwd, run_dir)
    called: dict[str, Any] = {}
    if isinstance(job, Call) and data.get("reason") == "exited":
        called = outcome_fields(run_dir / worker.OUTCOME_FILE)
        if called:
            state = RunState.SUCCEEDED if called.pop("ok") else RunState.FAILED
            error = called.pop("error")
    code = data.get("exit_code")
    return RunResult(
        **called,
        run_id=run_id,
        state=state,
        exit_code=code if isinstance(code, int) else None,
        started_at=utc_time(data.get("started", started)),
        ended_at=utc_time(data.get("ended")),
        stdout=stdout,
        stderr=stderr,
        outputs=outputs,
        error=error,
        run_dir=run_dir,  # the handle's own folder: no copy to add it later
    )
