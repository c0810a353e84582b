"""``SlurmBackend``: submits each job (or an array of calls) with sbatch."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import anyio

from ... import _integrity as integrity
from ... import _worker as worker
from ..._files import default_runs_dir, write_atomic
from ..._runs import check_inputs_reachable, chosen_run_id, make_run_dir, new_run_id, stage_inputs
from ...backend import Backend
from ...call import Call
from ...capabilities import Availability
from ...errors import ConfigError, RecordError, SubmitError
from ...handle import RunHandle
from ...job import Job
from ...records import write_record
from . import _commands as cmd
from ._script import JOB_ID_FILE, SCRIPT_FILE, SLURM_OUTPUT, Member, limits, render, sbatch_options
from .config import CAPABILITIES, SlurmConfig, controller_availability
from .handle import SlurmRunHandle


class SlurmBackend(Backend[SlurmConfig]):
    """Submits each job as a Slurm batch job; see the package docstring."""

    capabilities: ClassVar[frozenset[str]] = CAPABILITIES

    async def check(self) -> Availability:
        """Whether the Slurm commands are on PATH, slurmctld answers and the partition exists."""
        return await anyio.to_thread.run_sync(controller_availability, self.config.partition)

    # -- what runs -----------------------------------------------------------------

    def _argv(self, job: Job, run_dir: Path) -> list[str]:
        if isinstance(job, Call):
            return [self.config.python or sys.executable, "-P", worker.__file__, str(run_dir)]
        command = job.command
        if command is None:
            raise ConfigError(f"Job {job.name!r} has no command: give the job a command.")
        if isinstance(command, list):
            return [str(part) for part in command]
        if self.config.shell:
            return ["/bin/sh", "-c", command]
        try:
            return shlex.split(command)
        except ValueError as exc:
            raise ConfigError(f"Job {job.name!r}: cannot split command ({exc}).") from exc

    def _env(self, job: Job) -> dict[str, str]:
        """sbatch's environment, which the job inherits (Slurm's default --export=ALL).

        Secret values travel this way only, never through a file of the run. Slurm
        variables of an enclosing allocation are left out: they would describe
        another job.
        """
        base = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        return {**base, **self.config.resolved_env(), **job.resolved_env()}

    def _runs_dir(self) -> Path:
        return (self.config.runs_dir or default_runs_dir()).expanduser().absolute()

    def _prepare(self, job: Job, run_id: str) -> Member:
        """Make the run's folder: inputs staged, a Call's payload written."""
        workdir = job.workdir or self.config.working_dir
        if workdir is not None:
            workdir = workdir.expanduser().absolute()
            check_inputs_reachable(job.name, job.inputs, workdir)
        payload = job.payload() if isinstance(job, Call) else None
        if payload is not None:
            integrity.key()  # made now, so the worker on the node can sign the outcome
        run_dir = make_run_dir(self._runs_dir(), run_id)
        try:
            stage_inputs(job.inputs, run_dir)
            if payload is not None:
                write_atomic(run_dir / worker.PAYLOAD_FILE, payload)
            return Member(run_id, run_dir, workdir or run_dir, self._argv(job, run_dir))
        except BaseException:
            shutil.rmtree(run_dir, ignore_errors=True)
            raise

    # -- submitting ------------------------------------------------------------------

    async def submit(self, job: Job, *, run_id: str | None = None) -> SlurmRunHandle:
        """Write the run's batch script and submit it with ``sbatch --parsable``.

        Returns once Slurm has the job (and its record is in the run folder), with
        the job PENDING. ``run_id`` (default: a new one) names the run, its folder
        and the Slurm job; see :meth:`find`. A refusal by Slurm (a bad partition, a
        limit) is a :class:`SubmitError` carrying Slurm's own message.
        """
        chosen = run_id is not None
        run_id = chosen_run_id(run_id, job.name)
        if chosen:
            self._clear_unsubmitted(self._runs_dir() / run_id)
        member = self._prepare(job, run_id)
        handles = await self._sbatch(job, [member], job_name=run_id)
        return handles[0]

    async def submit_array(
        self, jobs: Sequence[Job], *, max_concurrency: int | None = None
    ) -> list[RunHandle]:
        """Submit many jobs as one ``sbatch --array`` (``%max_concurrency`` at once).

        The jobs must share what sbatch sees (environment, resources); jobs that
        differ there are submitted one by one instead. Each member gets its own
        run folder and handle (run ids ``<array>_<index>``); the watcher tracks the
        whole array with the same single squeue call.
        """
        if len(jobs) < 2 or not _alike(jobs):
            return await super().submit_array(jobs, max_concurrency=max_concurrency)
        base = new_run_id(jobs[0].name)
        members: list[Member] = []
        try:
            for index, job in enumerate(jobs):
                members.append(self._prepare(job, f"{base}_{index}"))
            limit = f"%{max_concurrency}" if max_concurrency else ""
            return list(
                await self._sbatch(
                    jobs[0],
                    members,
                    job_name=base,
                    array=f"0-{len(jobs) - 1}{limit}",
                    jobs=list(jobs),
                )
            )
        except BaseException:
            for member in members:
                shutil.rmtree(member.run_dir, ignore_errors=True)
            raise

    async def _sbatch(
        self,
        job: Job,
        members: list[Member],
        *,
        job_name: str,
        array: str | None = None,
        jobs: list[Job] | None = None,
    ) -> list[SlurmRunHandle]:
        config = self.config
        timeout, time_limit = limits(config, job)
        options = sbatch_options(config, job, time_limit)
        first = members[0].run_dir
        script = first / SCRIPT_FILE
        if array is None:
            own = [f"--job-name={job_name}", f"--output={first / SLURM_OUTPUT}"]
        else:
            pattern = self._runs_dir() / f"{job_name}_%a" / SLURM_OUTPUT
            own = [f"--job-name={job_name}", f"--output={pattern}", f"--array={array}"]
        own.append(f"--chdir={first if array is None else self._runs_dir()}")
        try:
            text = render(config, members, timeout, [*own, *options])
            write_atomic(script, text.encode(), mode=0o700)
        except OSError as exc:
            shutil.rmtree(first, ignore_errors=True)
            raise SubmitError(f"Cannot write the batch script '{script}': {exc}") from exc
        # Shielded: once sbatch runs, the job may exist; its record must follow.
        with anyio.CancelScope(shield=True):
            submitted = time.time()
            try:
                job_id = await cmd.sbatch(
                    [*own, *options, str(script)], self._env(job), config.max_submits
                )
            except BaseException:
                for member in members:
                    shutil.rmtree(member.run_dir, ignore_errors=True)
                raise
            handles = []
            for index, member in enumerate(members):
                handle = SlurmRunHandle(
                    run_id=member.run_id,
                    job=job if jobs is None else jobs[index],
                    config=config,
                    run_dir=member.run_dir,
                    cwd=member.cwd,
                    job_id=job_id if array is None else f"{job_id}_{index}",
                    job_name=job_name,
                    script=script,
                    submitted_at=submitted,
                    timeout=timeout,
                )
                # The folder alone finds the run again (tether ls, find, a crash).
                write_record(member.run_dir / "handle.json", handle.to_record(), sync=False)
                handles.append(handle)
        return handles

    # -- finding ---------------------------------------------------------------------

    async def find(self, job: Job, run_id: str) -> SlurmRunHandle | None:
        """The run ``submit(job, run_id=run_id)`` submitted, even if its submitter died
        inside ``submit``: from the run's record, else from the queue (a job named
        ``run_id`` running this run's script), else from the job id the script wrote
        on the node. None when no job was ever submitted."""
        from ...registry import load_handle

        run_dir = self._runs_dir() / chosen_run_id(run_id, job.name)
        record = run_dir / "handle.json"
        if record.is_file():
            handle = await load_handle(record)
            if not isinstance(handle, SlurmRunHandle):
                raise RecordError(f"'{record}' is a {handle.backend_type!r} run, not a slurm one.")
            return handle
        script = run_dir / SCRIPT_FILE
        if not script.is_file():
            return None
        job_id = None
        for found, _state, command in await cmd.find_by_name(run_dir.name):
            if command.strip() == str(script):  # the script takes no arguments
                job_id = found
        if job_id is None:
            with contextlib.suppress(OSError):
                job_id = (run_dir / JOB_ID_FILE).read_text().strip() or None
        if job_id is None:
            return None
        timeout, _ = limits(self.config, job)
        handle = SlurmRunHandle(
            run_id=run_dir.name,
            job=job,
            config=self.config,
            run_dir=run_dir,
            cwd=(job.workdir or self.config.working_dir or run_dir).expanduser().absolute(),
            job_id=job_id,
            job_name=run_dir.name,
            script=script,
            submitted_at=script.stat().st_mtime,
            timeout=timeout,
        )
        write_record(record, handle.to_record(), sync=False)
        return handle

    def _clear_unsubmitted(self, run_dir: Path) -> None:
        """Remove the folder a submit that died before sbatch left (no job, no record),
        so that ``submit(job, run_id=…)`` can be called again after find() said None."""
        submitted = (run_dir / "handle.json").exists() or (run_dir / JOB_ID_FILE).exists()
        if run_dir.is_dir() and not submitted:
            shutil.rmtree(run_dir, ignore_errors=True)


def _alike(jobs: Sequence[Job]) -> bool:
    """Whether the jobs can share one sbatch call: same environment and resources."""
    first = jobs[0]
    return all(
        type(job) is type(first)
        and job.env == first.env
        and job.resources == first.resources
        and job.workdir == first.workdir
        for job in jobs[1:]
    )
