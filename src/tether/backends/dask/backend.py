"""``DaskBackend``: submits each job as one Dask task, held by the scheduler."""

from __future__ import annotations

import os
import shlex
import shutil
import time
from pathlib import Path
from typing import Any, ClassVar

import anyio

from ..._files import default_runs_dir
from ..._runs import check_inputs_reachable, chosen_run_id, make_run_dir, stage_inputs
from ...backend import Backend
from ...call import Call
from ...capabilities import Availability
from ...errors import BackendError, ConfigError, RecordError, SubmitError
from ...job import Job
from ...records import write_record
from . import _client, _prune
from ._task import run_task
from .config import CAPABILITIES, DaskConfig, dask_availability
from .handle import DaskRunHandle


class DaskBackend(Backend[DaskConfig]):
    """Submits each job as a Dask task keyed by its run id; see the package docstring."""

    capabilities: ClassVar[frozenset[str]] = CAPABILITIES

    async def check(self) -> Availability:
        """Whether distributed is installed and the scheduler answers (with a worker).

        The embedded cluster (``address=None``) needs only the extra.
        """
        found = dask_availability()
        if not found or self.config.address is None:
            return found
        try:
            _client.require_asyncio("Checking a Dask scheduler")
        except Exception as exc:
            return Availability(False, str(exc))
        try:
            async with _client.connect(self.config.address, self.config) as c:
                info = await c.scheduler.identity()
        except BackendError as exc:
            return Availability(False, str(exc))
        if not info.get("workers"):
            return Availability(
                False,
                f"Dask scheduler at {self.config.address} has no workers: start some "
                f"(dask worker {self.config.address})",
            )
        return Availability(True)

    # -- what runs -----------------------------------------------------------------

    def _argv(self, job: Job) -> list[str]:
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

    def _runs_dir(self) -> Path:
        return (self.config.runs_dir or default_runs_dir()).expanduser().absolute()

    def _timeout(self, job: Job) -> float:
        timeout = float(self.config.timeout)
        if job.resources.walltime is not None:
            timeout = min(timeout, float(job.resources.walltime))
        return timeout

    def _resources(self, job: Job) -> dict[str, float]:
        """The Dask worker resources the run asks for: the config's, and the job's GPUs."""
        wanted = dict(self.config.resources)
        if job.resources.gpus:
            wanted["GPU"] = float(job.resources.gpus)
        return wanted

    def _spec(self, job: Job, run_id: str, run_dir: Path, cwd: Path) -> dict[str, Any]:
        """What the task on the worker needs (secret values travel only this way)."""
        spec: dict[str, Any] = {
            "run_id": run_id,
            "run_dir": str(run_dir),
            "cwd": str(cwd),
            "env": {**self.config.resolved_env(), **job.resolved_env()},
            "timeout": self._timeout(job),
            "grace": self.config.cancel_grace,
        }
        if self.config.address is None:  # the embedded cluster's runs end with this process
            spec["owner_pid"] = os.getpid()
        if isinstance(job, Call):
            spec["payload"] = job.payload()
            if self.config.call_mode == "thread":
                spec["thread_call"] = True
            else:
                spec["argv"] = None  # the worker's own Python runs tether's worker module
        else:
            spec["argv"] = self._argv(job)
        return spec

    def _check(self, job: Job) -> None:
        thread = isinstance(job, Call) and self.config.call_mode == "thread"
        if thread and (job.env or job.workdir or self.config.env_vars or self.config.working_dir):
            raise ConfigError(
                f"Call {job.name!r}: env and workdir need a process of their own, but "
                "call_mode='thread' runs calls in the worker's thread: use "
                "call_mode='process'."
            )

    # -- submitting ------------------------------------------------------------------

    async def submit(self, job: Job, *, run_id: str | None = None) -> DaskRunHandle:
        """Make the run's folder, submit its task (key: the run id) and publish it.

        Returns once the scheduler holds the run (as the dataset named by the run
        id), so it goes on whatever happens to this process. With ``address=None``
        the run is on this process's embedded cluster and ends with it. ``run_id``
        (default: a new one) names the run; see :meth:`find`. An id the scheduler
        already holds is a :class:`SubmitError` (Dask would not run the key again).
        """
        _client.require_asyncio()
        self._check(job)
        config = self.config
        address = config.address or await _client.embedded_address(config)
        chosen = run_id is not None
        run_id = chosen_run_id(run_id, job.name)
        if chosen:
            async with _client.connect(address, config) as client:
                if run_id in await client.list_datasets():
                    raise SubmitError(
                        f"Run id {run_id!r} is taken on the Dask scheduler at {address}: "
                        "find() re-attaches to that run; choose another id for a new one."
                    )
            self._clear_unsubmitted(self._runs_dir() / run_id)
        workdir = job.workdir or config.working_dir
        if workdir is not None:
            workdir = workdir.expanduser().absolute()
            check_inputs_reachable(job.name, job.inputs, workdir)
        run_dir = make_run_dir(self._runs_dir(), run_id)
        try:
            stage_inputs(job.inputs, run_dir)
            cwd = workdir or run_dir
            spec = self._spec(job, run_id, run_dir, cwd)
        except BaseException:
            shutil.rmtree(run_dir, ignore_errors=True)
            raise
        # Shielded: once the task is submitted, its publication and record must follow.
        with anyio.CancelScope(shield=True):
            submitted = time.time()
            try:
                async with _client.connect(address, config) as client:
                    future = client.submit(
                        run_task,
                        spec,
                        key=run_id,
                        pure=False,
                        resources=self._resources(job) or None,
                    )
                    await client.publish_dataset(future, name=run_id)
            except BackendError as exc:
                shutil.rmtree(run_dir, ignore_errors=True)
                raise SubmitError(str(exc)) from exc
            except Exception as exc:
                shutil.rmtree(run_dir, ignore_errors=True)
                raise SubmitError(
                    f"Dask scheduler at {address} refused run {run_id}: {exc}"
                ) from exc
            handle = DaskRunHandle(
                run_id=run_id,
                job=job,
                config=config,
                address=address,
                embedded_pid=os.getpid() if config.address is None else None,
                run_dir=run_dir,
                cwd=cwd,
                submitted_at=submitted,
                timeout=spec["timeout"],
            )
            write_record(run_dir / "handle.json", handle.to_record(), sync=False)
        return handle

    # -- finding ---------------------------------------------------------------------

    async def find(self, job: Job, run_id: str) -> DaskRunHandle | None:
        """The run ``submit(job, run_id=run_id)`` submitted, even if its submitter died
        inside ``submit``: from the run's record, else from the scheduler (a dataset
        of that name, and the run's folder). None when no run was ever published."""
        from ...registry import load_handle

        run_dir = self._runs_dir() / chosen_run_id(run_id, job.name)
        record = run_dir / "handle.json"
        if record.is_file():
            handle = await load_handle(record)
            if not isinstance(handle, DaskRunHandle):
                raise RecordError(f"'{record}' is a {handle.backend_type!r} run, not a dask one.")
            return handle
        if not run_dir.is_dir():
            return None
        config = self.config
        address = config.address or await _client.embedded_address(config)
        async with _client.connect(address, config) as client:
            if run_dir.name not in await client.list_datasets():
                return None
        workdir = job.workdir or config.working_dir
        handle = DaskRunHandle(
            run_id=run_dir.name,
            job=job,
            config=config,
            address=address,
            embedded_pid=os.getpid() if config.address is None else None,
            run_dir=run_dir,
            cwd=workdir.expanduser().absolute() if workdir is not None else run_dir,
            submitted_at=run_dir.stat().st_mtime,
            timeout=self._timeout(job),
        )
        write_record(record, handle.to_record(), sync=False)
        return handle

    async def prune(
        self, *, older_than: float | None = None, dry_run: bool = False
    ) -> list[_prune.PrunedRun]:
        """Release the runs the scheduler keeps that ended ``older_than`` seconds ago or
        more (all ended ones by default), as ``handle.forget()`` would: the cleanup
        for handles nobody will load again. Runs still going are listed, never
        touched; so are datasets that are not tether's. ``dry_run`` releases nothing.
        """
        _client.require_asyncio()
        return await _prune.prune(self.config, older_than=older_than, dry_run=dry_run)

    def _clear_unsubmitted(self, run_dir: Path) -> None:
        """Remove the folder a submit that died before publishing left (no record), so
        that ``submit(job, run_id=…)`` can be called again after find() said None."""
        if run_dir.is_dir() and not (run_dir / "handle.json").exists():
            shutil.rmtree(run_dir, ignore_errors=True)
