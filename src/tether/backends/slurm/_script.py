"""The batch script and the sbatch options of a Slurm run (or of an array of runs).

The script does one thing: it execs tether's pure-Python run supervisor (the local
backend's, ``_supervisor/fallback.py``) on the node. The supervisor runs the
command in the run folder's terms (cwd, stdout and stderr files), enforces the
run's timeout, turns a TERM (a cancel) into TERM-then-KILL of the whole command
tree, and records the outcome (exit code, signal, start and end time) in
``exit.json`` atomically. So a finished job's result never depends on accounting
(``sacct``) nor on the job still being in the queue. Slurm's own ``--time`` is
only a backstop, set past the supervisor's deadline.

Options go on sbatch's command line, not in ``#SBATCH`` lines: paths and names
need no quoting rules of sbatch's own, and the script stays readable.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from ... import _supervisor
from ...job import Job
from .config import SlurmConfig, slurm_memory, time_seconds, time_text

#: Files of a Slurm run in its run folder (besides stdout, stderr, exit.json).
SCRIPT_FILE = "slurm.sbatch"
SLURM_OUTPUT = ".slurm-output"
JOB_ID_FILE = ".slurm-job-id"
#: Seconds between the supervisor's deadline (plus its grace) and Slurm's limit.
BACKSTOP_MARGIN = 60.0


@dataclass(frozen=True)
class Member:
    """One run of a submission: its folder, working folder and command."""

    run_id: str
    run_dir: Path
    cwd: Path
    argv: list[str]


def supervisor_argv(config: SlurmConfig) -> list[str]:
    """The supervisor as the node runs it: the configured Python, isolated."""
    script = Path(_supervisor.__file__).with_name("fallback.py")
    return [config.python or sys.executable, "-I", "-S", str(script)]


def limits(config: SlurmConfig, job: Job) -> tuple[float, str]:
    """(the supervisor's timeout in seconds, sbatch's ``--time``) for ``job``.

    The run's timeout is the job's walltime or the base timeout. An explicit
    ``time_limit`` shorter than that makes the supervisor stop the run early
    enough to record TIMED_OUT itself before Slurm kills it.
    """
    timeout = float(config.timeout)
    if job.resources.walltime is not None:
        timeout = min(timeout, job.resources.walltime)
    if config.time_limit is None:
        return timeout, time_text(timeout + config.cancel_grace + BACKSTOP_MARGIN)
    limit = time_seconds(config.time_limit)
    room = limit - config.cancel_grace - 5
    return max(1.0, min(timeout, room)), config.time_limit


def sbatch_options(config: SlurmConfig, job: Job, time_limit: str) -> list[str]:
    """Resource and placement options: the config's, with the job's resources winning."""
    options = [f"--time={time_limit}", f"--nodes={config.nodes}", "--no-requeue"]
    resources = job.resources
    if config.partition:
        options.append(f"--partition={config.partition}")
    if config.ntasks:
        options.append(f"--ntasks={config.ntasks}")
    cpus = resources.cpus or config.cpus_per_task
    if cpus:
        options.append(f"--cpus-per-task={cpus}")
    if resources.memory:
        options.append(f"--mem={slurm_memory(resources.memory)}")
    elif config.mem:
        options.append(f"--mem={config.mem}")
    gpus = resources.gpus if resources.gpus is not None else config.gpus
    if gpus:
        options.append(f"--gpus={gpus}")
    for name, value in (
        ("account", config.account),
        ("qos", config.qos),
        ("constraint", config.constraint),
    ):
        if value:
            options.append(f"--{name}={value}")
    if config.exclusive:
        options.append("--exclusive")
    for line in config.extra_sbatch:
        options += shlex.split(line)
    return options


def _launch(config: SlurmConfig, member: Member, timeout: float, job_id: str) -> list[str]:
    """The lines that start one member: record the job id, then exec the supervisor."""
    folder = shlex.quote(str(member.run_dir))
    record = shlex.quote(str(member.run_dir / JOB_ID_FILE))
    argv = [
        *supervisor_argv(config),
        str(member.run_dir),
        str(member.cwd),
        repr(timeout),
        repr(float(config.cancel_grace)),
        "1",
        *member.argv,
    ]
    return [
        f"export TETHER_RUN_ID={shlex.quote(member.run_id)} TETHER_RUN_DIR={folder}",
        f'printf "%s\\n" "{job_id}" > {record}.tmp && mv -f {record}.tmp {record}',
        # fd 3 is the supervisor's gate: the record exists, so it may start at once.
        f"exec {shlex.join(argv)} 3<<<g",
    ]


def render(config: SlurmConfig, members: list[Member], timeout: float, options: list[str]) -> str:
    """The batch script for one run, or for an array (one case per task id)."""
    lines = [
        "#!/bin/bash",
        f"# tether: {len(members)} run(s) of job {members[0].run_id}, submitted with",
        f"#   sbatch --parsable {shlex.join(options)} <this script>",
        "# The supervisor records the outcome in the run folder's exit.json itself.",
    ]
    if len(members) == 1:
        lines += _launch(config, members[0], timeout, "$SLURM_JOB_ID")
        return "\n".join(lines) + "\n"
    lines.append('case "$SLURM_ARRAY_TASK_ID" in')
    for index, member in enumerate(members):
        launch = _launch(config, member, timeout, "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}")
        lines.append(f"  {index})")
        lines += [f"    {line}" for line in launch]
        lines.append("    ;;")
    lines.append("esac")
    lines.append('echo "tether: no run for array task $SLURM_ARRAY_TASK_ID" >&2')
    lines.append("exit 2")
    return "\n".join(lines) + "\n"
