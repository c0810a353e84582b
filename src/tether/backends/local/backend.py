"""LocalBackend: starts each job under its own supervisor."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import time
from pathlib import Path
from typing import Any, ClassVar

import anyio

from ... import _integrity as integrity
from ... import _proc
from ... import _worker as worker
from ..._files import default_runs_dir, write_atomic
from ..._runs import (
    check_inputs_reachable,
    chosen_run_id,
    make_run_dir,
    stage_inputs,
)
from ..._supervisor import admission_argv, cached_supervisor, supervisor_argv
from ...backend import Backend
from ...call import Call, call_argv
from ...errors import ConfigError, RecordError, SubmitError
from ...job import Job
from ...result import RunState
from . import _slots
from ._common import (
    _CAPABILITIES,
    _GATE_PATIENCE,
    _OWN_SESSION,
    _SPAWN_MASK,
    _adopt,
    _boot_id,
    _children,
    _process_env,
    _reap_finished,
    _record_bytes,
    _spawn_files,
    _write_new_record,
)
from .config import LocalConfig
from .handle import LocalRunHandle


class LocalBackend(Backend[LocalConfig]):
    """Starts each job under its own supervisor; see the module docstring."""

    capabilities: ClassVar[frozenset[str]] = _CAPABILITIES
    #: ``config.to_record()`` as JSON, made on first submit (a config never changes).
    _config_json: str | None = None

    def _argv(self, job: Job) -> list[str]:
        if isinstance(job, Call):
            return call_argv()
        command = job.command if job.command is not None else self.config.command
        if command is None:
            raise ConfigError(
                f"Job {job.name!r} has no command: give the job a command or set "
                "LocalConfig.command."
            )
        if isinstance(command, list):
            return [str(part) for part in command]
        if self.config.shell:
            return ["/bin/sh", "-c", command]
        try:
            return shlex.split(command)
        except ValueError as exc:
            raise ConfigError(f"Job {job.name!r}: cannot split command ({exc}).") from exc

    async def submit(self, job: Job, *, run_id: str | None = None) -> LocalRunHandle:
        """Start ``job`` under a supervisor and return at once.

        ``run_id`` (default: a new one) names the run and its folder; see :meth:`find`.
        """
        argv = self._argv(job)
        if job.workdir or self.config.working_dir:
            workdir = (job.workdir or self.config.working_dir or Path()).expanduser().absolute()
            check_inputs_reachable(job.name, job.inputs, workdir)
        payload = job.payload() if isinstance(job, Call) else None
        if payload is not None:
            integrity.key()  # made now, so the worker can sign the call's outcome
        config = self.config
        timeout = float(config.timeout)
        if job.resources.walltime is not None:
            timeout = min(timeout, job.resources.walltime)
        # The first run may compile the supervisor: do that off the event loop.
        supervisor = cached_supervisor()
        if supervisor is None:
            supervisor = await anyio.to_thread.run_sync(supervisor_argv)
        _reap_finished()
        chosen = run_id is not None
        run_id = chosen_run_id(run_id, job.name)
        if chosen:
            await self._clear_unstarted(self._runs_dir() / run_id)
        request: dict[str, Any] | None = None
        if _slots.wants_slots(job):
            # The admission step becomes the supervisor once the slots are free.
            request = await anyio.to_thread.run_sync(
                _slots.admission_request, job, config, run_id, supervisor
            )
            supervisor = admission_argv()
        run_dir = make_run_dir(self._runs_dir(), run_id)
        cwd = self._cwd(job, run_dir)
        gate: int | None = None
        ticket: int | None = None
        try:
            stage_inputs(job.inputs, run_dir)
            if request is not None:
                # Its place in the queue, taken now: slots go in submission order.
                ticket = await anyio.to_thread.run_sync(_slots.queue, request)
                _slots.write_request(run_dir, request)
            if payload is not None:
                write_atomic(run_dir / worker.PAYLOAD_FILE, payload)
                argv = [*argv, str(run_dir)]
            env = _process_env(
                {
                    **config.resolved_env(),
                    **job.resolved_env(),
                    "TETHER_RUN_ID": run_id,
                    "TETHER_RUN_DIR": str(run_dir),
                }
            )
            args = [
                *supervisor,
                str(run_dir),
                str(cwd),
                repr(timeout),
                repr(config.cancel_grace),
                "1" if config.capture_output else "0",
                *argv,
            ]
            # The supervisor leaves for a session of its own as its first act, not in
            # posix_spawn: there a new session stalls this process until the exec
            # (supervise.c, item 0). The admission step is spawned in one.
            admission = request is not None
            if not admission:
                env.update(_OWN_SESSION)
            started = time.time()
            # The supervisor waits at a gate (fd 3) until the run's record is written:
            # if this process dies before that, the run never starts (no run without
            # a record, so find() and the cache never miss one, nor start it twice).
            gate_read, gate = os.pipe()
            try:
                pid = os.posix_spawn(
                    supervisor[0],
                    args,
                    env,
                    file_actions=_spawn_files(config.capture_output, gate_read, ticket),
                    setsid=admission,
                    # Blocked until the supervisor's handlers are in place: a cancel sent
                    # right after submit is held, not fatal to the supervisor.
                    setsigmask=_SPAWN_MASK,
                )
            finally:
                os.close(gate_read)
            if ticket is not None:
                os.close(ticket)  # the admission step holds the ticket's lock now
                ticket = None
            _adopt(pid)
            handle = self._handle(job, run_id, run_dir, pid, started, slots=request is not None)
            # The record lives in the run folder: runs can be found and re-attached
            # from the folder alone (``tether ls``), even if the caller never saves one.
            try:
                _write_new_record(run_dir, self._record(handle))
            except OSError as exc:
                raise SubmitError(
                    f"Cannot write the run record in '{run_dir}': {exc.strerror or exc}; "
                    "free some space or set runs_dir to a writable folder."
                ) from exc
            os.write(gate, b"g")
        except BaseException as exc:
            if gate is not None:
                os.close(gate)  # the gate never opened: the supervisor leaves at once
                gate = None
                with anyio.CancelScope(shield=True):
                    await self._await_supervisor_exit()
            if request is not None and request["ticket"] is not None:
                _slots.unqueue(request, ticket)
            with contextlib.suppress(OSError):
                shutil.rmtree(run_dir)
            if isinstance(exc, OSError):
                raise SubmitError(f"Cannot start run of job {job.name!r}: {exc}") from exc
            raise
        finally:
            if gate is not None:
                os.close(gate)
        return handle

    def _record(self, handle: LocalRunHandle) -> bytes:
        """The bytes of the run's ``handle.json`` (the config's part encoded once)."""
        if self._config_json is None:
            self._config_json = json.dumps(self.config.to_record())
        record = {  # RunHandle.to_record() but the config
            "backend": handle.backend_type,
            "run_id": handle.run_id,
            "job": handle.job.to_record(),
            "data": handle._record_data(),
        }
        return _record_bytes(record, self._config_json)

    async def _await_supervisor_exit(self) -> None:
        """Reap supervisors whose gate closed unopened (they exit at once)."""
        with anyio.move_on_after(5.0):
            while _children:
                _reap_finished()
                if not _children:
                    break
                await anyio.sleep(0.01)

    async def _clear_unstarted(self, run_dir: Path) -> None:
        """Remove what a submit that died before its run started left in ``run_dir``.

        Only a folder in which no run ever started (no record, no outcome, no
        supervisor naming it) is cleared, so that ``submit(job, run_id=…)`` can be
        called again after :meth:`find` returned None.
        """
        if not run_dir.is_dir() or any(
            (run_dir / name).exists() for name in ("handle.json", "exit.json", ".exit.json.tmp")
        ):
            return
        # A supervisor still at the gate (its submitter died before the record) sees
        # the gate's end and exits; on a busy machine that can take a moment.
        folder = str(run_dir)

        async def at_gate() -> bool:
            return await anyio.to_thread.run_sync(_proc.find_by_argument, folder) is not None

        with anyio.move_on_after(_GATE_PATIENCE):
            while await at_gate():  # noqa: ASYNC110 (another process's exit)
                await anyio.sleep(0.05)
        if await at_gate():
            raise SubmitError(
                f"Run folder '{run_dir}' still has a supervisor waiting at its gate after "
                f"{_GATE_PATIENCE:g}s: try again, or submit with another run_id."
            )
        with contextlib.suppress(OSError):
            shutil.rmtree(run_dir)

    def _runs_dir(self) -> Path:
        return (self.config.runs_dir or default_runs_dir()).expanduser().absolute()

    def _cwd(self, job: Job, run_dir: Path) -> Path:
        return (job.workdir or self.config.working_dir or run_dir).expanduser().absolute()

    def _handle(
        self, job: Job, run_id: str, run_dir: Path, pid: int, started: float, *, slots: bool
    ) -> LocalRunHandle:
        timeout = float(self.config.timeout)
        if job.resources.walltime is not None:
            timeout = min(timeout, job.resources.walltime)
        return LocalRunHandle(
            run_id=run_id,
            job=job,
            config=self.config,
            run_dir=run_dir,
            cwd=self._cwd(job, run_dir),
            pid=pid,
            ticks=_proc.start_ticks(pid),
            boot_id=_boot_id(),
            started_at=started,
            timeout=timeout,
            slots=slots,
        )

    async def find(self, job: Job, run_id: str) -> LocalRunHandle | None:
        """The run ``submit(job, run_id=run_id)`` started, even if its submitter died early.

        A run's record (``handle.json``) is written before its command can start (the
        supervisor waits for it at a gate), so a run folder without a record is a
        run that never started: None, and submitting again with this ``run_id``
        starts it. A record whose supervisor died at the gate (its submitter died
        after writing the record) is a run that never started too.
        """
        run_dir = self._runs_dir() / chosen_run_id(run_id, job.name)
        record = run_dir / "handle.json"
        if not record.is_file():
            return None
        from ...registry import load_handle

        handle = await load_handle(record)
        if not isinstance(handle, LocalRunHandle):
            raise RecordError(f"'{record}' is a {handle.backend_type!r} run, not a local one.")
        state = await handle.refresh()
        started = (run_dir / ".exit.json.tmp").exists() or (run_dir / "exit.json").exists()
        if state is RunState.LOST and not started:
            return None
        return handle
