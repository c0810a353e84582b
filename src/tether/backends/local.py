"""Local processes: detached, resumable runs on this machine.

Each run gets a folder and a small supervisor process (see ``tether._supervisor``)
started in a new session. The supervisor, not the Python process that submitted
the run, enforces the timeout, turns a cancel into TERM-then-KILL of the run's
process group and records the exit status in ``exit.json``; so a run survives
the death of its submitter and any process can re-attach to it from a saved
handle. Waiting uses Linux pidfds: no thread and no poll loop per run.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import shlex
import shutil
import signal
import time
from collections.abc import AsyncGenerator
from functools import cache
from pathlib import Path
from typing import Any, ClassVar, Literal

import anyio
from pydantic import ConfigDict, Field

from .. import _integrity as integrity
from .. import _proc
from .. import _worker as worker
from .._files import default_runs_dir, write_atomic
from .._outcome import failure_reason, supervised_result
from .._runs import (
    check_inputs_reachable,
    chosen_run_id,
    make_run_dir,
    stage_inputs,
    tail_lines,
)
from .._shield import shielded_method
from .._supervisor import cached_supervisor, supervisor_argv
from ..backend import Backend
from ..call import Call, call_argv
from ..capabilities import Availability
from ..config import BackendConfig
from ..errors import BackendUnavailableError, ConfigError, RecordError, SubmitError
from ..handle import RunHandle, Stream, check_stream
from ..job import Job
from ..records import write_record
from ..result import RunResult, RunState

_CAPABILITIES = frozenset(
    {"detached", "reattach", "find", "cancel", "logs_follow", "commands", "calls", "timeout"}
)


class LocalConfig(BackendConfig):
    """Run jobs as processes on this machine (rompy's ``LocalConfig``, detached)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "type": "local",
                    "timeout": 7200,
                    "env_vars": {"OMP_NUM_THREADS": "4", "MODEL_DEBUG": "true"},
                    "command": "python run_model.py --verbose",
                    "shell": True,
                    "capture_output": True,
                },
                {"type": "local", "command": ["python", "-m", "model", "--steps", "100"]},
            ]
        }
    )

    type: Literal["local"] = Field(
        "local", description="Selects this backend in config files.", examples=["local"]
    )
    command: str | list[str] | None = Field(
        None,
        description="Command to run when the job gives none.",
        examples=["python run_model.py --verbose"],
    )
    shell: bool = Field(
        True,
        description="Run a string command through /bin/sh; False splits it into argv "
        "(no shell). A list command is always argv.",
        examples=[True],
    )
    capture_output: bool = Field(
        True,
        description="Write stdout/stderr to files in the run folder; False lets them go "
        "to the submitting process's terminal (logs() then yields nothing).",
        examples=[True],
    )
    runs_dir: Path | None = Field(
        None,
        description="Folder for run folders; default $TETHER_HOME/runs "
        "(~/.local/state/tether/runs).",
        examples=["~/tether-runs"],
    )
    cancel_grace: float = Field(
        5.0,
        ge=0,
        le=600,
        description="Seconds between TERM and KILL when a run is cancelled or times out.",
        examples=[5.0],
    )

    capabilities: ClassVar[frozenset[str]] = _CAPABILITIES
    preference: ClassVar[int] = 10  # this machine, detached and resumable: the default
    cache_ignore: ClassVar[frozenset[str]] = frozenset({"timeout", "runs_dir", "cancel_grace"})

    @classmethod
    def availability(cls) -> Availability:
        """Usable on Linux with pidfd support and a supervisor (native or Python)."""
        if not hasattr(os, "pidfd_open") or not Path("/proc/self/stat").exists():
            return Availability(False, "the local backend needs Linux (pidfd_open and /proc)")
        try:
            supervisor_argv()
        except BackendUnavailableError as exc:
            return Availability(False, str(exc))
        return Availability(True)

    def create(self) -> LocalBackend:
        """Return a :class:`LocalBackend` with these settings."""
        return LocalBackend(self)

    @classmethod
    def handle_class(cls) -> builtins.type[LocalRunHandle]:
        """Saved local runs load into :class:`LocalRunHandle`."""
        return LocalRunHandle


_CANCEL_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

# Supervisors we started are our children until they exit; reap the finished ones
# now and then so a long-lived submitter never piles up zombies.
_children: set[int] = set()
#: Seconds a resubmit waits for a supervisor at the gate of a dead submit to exit.
_GATE_PATIENCE = 30.0


def _reap_finished() -> None:
    _proc.reap_finished(_children)


@cache
def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


class LocalBackend(Backend[LocalConfig]):
    """Starts each job under its own supervisor; see the module docstring."""

    capabilities: ClassVar[frozenset[str]] = _CAPABILITIES

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
        run_dir = make_run_dir(self._runs_dir(), run_id)
        cwd = self._cwd(job, run_dir)
        gate: int | None = None
        try:
            stage_inputs(job.inputs, run_dir)
            if payload is not None:
                write_atomic(run_dir / worker.PAYLOAD_FILE, payload)
                argv = [*argv, str(run_dir)]
            env = {
                **os.environ,
                **config.resolved_env(),
                **job.resolved_env(),
                "TETHER_RUN_ID": run_id,
                "TETHER_RUN_DIR": str(run_dir),
            }
            args = [
                *supervisor,
                str(run_dir),
                str(cwd),
                repr(timeout),
                repr(config.cancel_grace),
                "1" if config.capture_output else "0",
                *argv,
            ]
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
                    file_actions=_spawn_files(config.capture_output, gate_read),
                    setsid=True,
                    # Blocked until the supervisor's handlers are in place: a cancel sent
                    # right after submit is held, not fatal to the supervisor.
                    setsigmask=_CANCEL_SIGNALS,
                )
            finally:
                os.close(gate_read)
            _children.add(pid)
            handle = self._handle(job, run_id, run_dir, pid, started)
            # The record lives in the run folder: runs can be found and re-attached
            # from the folder alone (``tether ls``), even if the caller never saves one.
            try:
                write_record(run_dir / "handle.json", handle.to_record(), sync=False)
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
            with contextlib.suppress(OSError):
                shutil.rmtree(run_dir)
            if isinstance(exc, OSError):
                raise SubmitError(f"Cannot start run of job {job.name!r}: {exc}") from exc
            raise
        finally:
            if gate is not None:
                os.close(gate)
        return handle

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
        self, job: Job, run_id: str, run_dir: Path, pid: int, started: float
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
        from ..registry import load_handle

        handle = await load_handle(record)
        if not isinstance(handle, LocalRunHandle):
            raise RecordError(f"'{record}' is a {handle.backend_type!r} run, not a local one.")
        state = await handle.refresh()
        started = (run_dir / ".exit.json.tmp").exists() or (run_dir / "exit.json").exists()
        if state is RunState.LOST and not started:
            return None
        return handle


def _write_outcome(run_dir: Path, outcome: dict[str, Any]) -> None:
    """Record an outcome the supervisor could not, over its reserved file if it made one
    (so it needs no new disk blocks), else as a new file; atomic either way."""
    reserve = run_dir / ".exit.json.tmp"
    data = (json.dumps(outcome) + "\n").encode()
    try:
        fd = os.open(reserve, os.O_WRONLY | os.O_NOFOLLOW)
    except OSError:
        write_atomic(run_dir / "exit.json", data)
        return
    try:
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)
    os.replace(reserve, run_dir / "exit.json")


def _spawn_files(capture: bool, gate: int) -> list[tuple[Any, ...]]:
    """stdin from /dev/null; with capture, stdout/stderr too, so the supervisor never
    holds the submitter's pipes open (``$(tether submit …)`` returns at once); the
    gate's read end as fd 3."""
    actions: list[tuple[Any, ...]] = [
        (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
        (os.POSIX_SPAWN_DUP2, gate, 3),
    ]
    if capture:
        actions += [
            (os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_WRONLY, 0),
            (os.POSIX_SPAWN_DUP2, 1, 2),
        ]
    return actions


class LocalRunHandle(RunHandle):
    """Handle of one local run; works from any process on the same machine."""

    backend_type: ClassVar[str] = "local"

    def __init__(
        self,
        *,
        run_id: str,
        job: Job,
        config: LocalConfig,
        run_dir: Path,
        cwd: Path,
        pid: int,
        ticks: int | None,
        boot_id: str,
        started_at: float,
        timeout: float,
    ) -> None:
        # A local run starts RUNNING: the supervisor is up when submit returns.
        super().__init__(
            run_id=run_id, job=job, config=config, state=RunState.RUNNING, run_dir=run_dir
        )
        self._local = config
        self._dir = run_dir
        self._cwd = cwd
        self._pid = pid
        self._ticks = ticks
        self._boot_id = boot_id
        self._started_at = started_at
        self._timeout = timeout

    @property
    def pid(self) -> int:
        """Pid of the run's supervisor (also its session id)."""
        return self._pid

    # -- observing --------------------------------------------------------------

    def _read_exit(self) -> dict[str, Any] | None:
        try:
            data = json.loads((self._dir / "exit.json").read_text())
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _alive(self) -> bool:
        if self._boot_id and self._boot_id != _boot_id():
            return False  # the machine rebooted since: the pid means nothing now
        return _proc.is_running(self._pid, self._ticks)

    def _impostor(self) -> str | None:
        """Why the live process the record names is not this run's supervisor, if so.

        A record is input, not authority: a crafted ``pid`` must never make tether
        signal a process it did not start.
        """
        if self._pid in _children:
            return None  # our own child: its pid cannot have been reused
        if not self._alive():
            return None  # nothing to touch; refresh() tells how the run ended
        return _proc.not_supervisor_of(self._pid, self._ticks, str(self._dir))

    def _result_from_exit(self, data: dict[str, Any]) -> RunResult:
        reason = data.get("reason")
        code = data.get("exit_code")
        stdout = self._dir / "stdout" if self._local.capture_output else None
        stderr = self._dir / "stderr" if self._local.capture_output else None
        error: str | None = None
        if reason == "timeout":
            state = RunState.TIMED_OUT
            error = f"timed out after {self._timeout:g}s (process group stopped)"
        elif reason == "cancelled":
            state = RunState.CANCELLED
            error = "cancelled"
        elif reason == "exited" and code == 0:
            state = RunState.SUCCEEDED
        else:
            state = RunState.FAILED
            error = data.get("error") or failure_reason(code, stderr)
            if data.get("disk_full"):
                error = (
                    f"{error}: no space left on device (the file system of '{self._dir}' "
                    "was full when the run ended)"
                )
        return supervised_result(
            data,
            state,
            error,
            run_id=self.run_id,
            job=self._job,
            run_dir=self._dir,
            cwd=self._cwd,
            started=self._started_at,
            stdout=stdout,
            stderr=stderr,
        )

    async def refresh(self) -> RunState:
        """Read the recorded exit status, or check that the supervisor still lives."""
        if self._result is not None:
            return self._state
        data = self._read_exit()
        if data is not None:
            self._finish(self._result_from_exit(data))
        elif not self._dir.is_dir():
            self._finish(self._lost(f"run folder {self._dir} no longer exists", self._started_at))
        elif (impostor := self._impostor()) is not None:
            self._finish(self._lost(f"{impostor}; not touching it", self._started_at))
        elif not self._alive():
            data = self._read_exit()  # it may have finished between the two looks
            if data is not None:
                self._finish(self._result_from_exit(data))
            else:
                self._finish(
                    self._lost(
                        "the run's supervisor ended without recording a status", self._started_at
                    )
                )
        return self._state

    def _open_pidfd(self) -> int | None:
        if self._pid in _children:
            # Our own unreaped child: its pid cannot have been reused, skip /proc.
            with contextlib.suppress(ProcessLookupError):
                return os.pidfd_open(self._pid)
            return None
        if self._boot_id and self._boot_id != _boot_id():
            return None
        fd = _proc.open_pidfd(self._pid, self._ticks)
        # The pidfd pins the process: prove it is this run's supervisor before use.
        if fd is not None and _proc.not_supervisor_of(self._pid, self._ticks, str(self._dir)):
            os.close(fd)
            return None
        return fd

    def _reap(self) -> None:
        """Collect our exited supervisor, so that no zombie is left behind."""
        if self._pid in _children:
            _proc.reap(self._pid)
            _children.discard(self._pid)

    async def _wait_done(self) -> RunResult:
        while self._result is None:
            fd = self._open_pidfd()
            if fd is not None:
                try:
                    await _proc.wait_pidfd(fd)
                finally:
                    os.close(fd)
                self._reap()
            # The supervisor is gone: exit.json says how the run ended, or it is LOST.
            await self.refresh()
        return self._result

    async def _wait_or_end(self, seconds: float) -> bool:
        """Sleep up to ``seconds``, waking early if the run ends; True once it has."""
        if (await self.refresh()).is_terminal:
            return True
        fd = self._open_pidfd()
        if fd is not None:
            try:
                with anyio.move_on_after(seconds):
                    await _proc.wait_pidfd(fd)
            finally:
                os.close(fd)
        return (await self.refresh()).is_terminal

    # -- acting ----------------------------------------------------------------

    @shielded_method
    async def cancel(self) -> None:
        """Ask the supervisor to stop the run (TERM, then KILL after the grace).

        Shielded: it finishes even when its caller is cancelled (asyncio's own
        ``task.cancel()`` and ``wait_for`` included).
        """
        if (await self.refresh()).is_terminal:
            return
        fd = self._open_pidfd()
        if fd is not None:
            try:
                signal.pidfd_send_signal(fd, signal.SIGTERM)
                with anyio.move_on_after(self._local.cancel_grace + 5.0) as scope:
                    await _proc.wait_pidfd(fd)
                if scope.cancelled_caught:  # the supervisor is stuck: do its job
                    _proc.kill_session(self._pid, signal.SIGKILL)
                    with contextlib.suppress(ProcessLookupError):
                        signal.pidfd_send_signal(fd, signal.SIGKILL)
                    self._record_cancel()
                # Anything that left the run's process group but not its session, or
                # is still dying from the group's TERM; cancel returns once it is gone.
                if _proc.kill_session(self._pid, signal.SIGKILL):
                    await _proc.wait_session_gone(self._pid)
            finally:
                os.close(fd)
            self._reap()
        await self.refresh()

    def _record_cancel(self) -> None:
        if self._read_exit() is None:
            _write_outcome(
                self._dir,
                {
                    "reason": "cancelled",
                    "started": self._started_at,
                    "ended": time.time(),
                    "exit_code": None,
                    "signal": signal.SIGKILL.value,
                    "error": None,
                    "supervisor": "orchestrator",
                },
            )

    async def logs(
        self, stream: Stream = "stdout", *, follow: bool = False
    ) -> AsyncGenerator[str, None]:
        """Lines of the run's stdout or stderr file; ``follow`` streams until the end."""
        check_stream(stream)
        if not self._local.capture_output:
            return
        async for line in tail_lines(
            self._dir / stream, follow=follow, wait_more=lambda: self._wait_or_end(0.2)
        ):
            yield line

    # -- records ---------------------------------------------------------------

    def _record_data(self) -> dict[str, Any]:
        return {
            "run_dir": str(self._dir),
            "cwd": str(self._cwd),
            "pid": self._pid,
            "start_ticks": self._ticks,
            "boot_id": self._boot_id,
            "started_at": self._started_at,
            "timeout": self._timeout,
        }

    @classmethod
    def _from_record(
        cls, run_id: str, job: Job, config: BackendConfig, data: dict[str, Any]
    ) -> LocalRunHandle:
        if not isinstance(config, LocalConfig):
            raise TypeError(f"expected a LocalConfig, got {type(config).__name__}")
        return cls(
            run_id=run_id,
            job=job,
            config=config,
            run_dir=Path(data["run_dir"]),
            cwd=Path(data["cwd"]),
            pid=int(data["pid"]),
            ticks=None if data["start_ticks"] is None else int(data["start_ticks"]),
            boot_id=str(data.get("boot_id", "")),
            started_at=float(data["started_at"]),
            timeout=float(data["timeout"]),
        )
