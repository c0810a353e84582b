"""Inline runs: ``Call`` jobs in this process's threads or in a pool of worker processes.

The sequential and joblib-style backends of Monte Carlo work as one backend:
``mode="sequential"`` runs calls one at a time in a background thread (the event
loop stays free), ``"threads"`` in ``n_jobs`` threads, ``"processes"`` in ``n_jobs``
worker processes. Pools are shared by every inline backend of the process with the
same settings and started on first use (see ``_inline_pool``).

An inline run lives in the process that started it: it has no run folder and does
not survive that process. A saved handle re-attaches within the same process; in
any other process (or after a restart) it comes back LOST, which is why this
backend lacks the ``detached`` and ``reattach`` capabilities.
"""

from __future__ import annotations

import builtins
import functools
import os
import weakref
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import anyio
from pydantic import ConfigDict, Field, model_validator

from .._runs import new_run_id
from .._shield import shielded_method
from ..backend import Backend
from ..call import Call
from ..config import BackendConfig
from ..errors import ConfigError
from ..handle import RunHandle, Stream, check_stream
from ..job import Job
from ..result import RunResult, RunState, utc_time

if TYPE_CHECKING:  # the pools (threads, ctypes, subprocess) load on first submit
    from ._inline_pool import InlineRun, Pool

_CAPABILITIES = frozenset({"calls", "cancel", "timeout"})

#: Runs of this process by id, while some handle holds them (same-process re-attach).
_RUNS: weakref.WeakValueDictionary[str, InlineRun] = weakref.WeakValueDictionary()


@functools.cache
def _cores() -> int:
    return os.cpu_count() or 1


class InlineConfig(BackendConfig):
    """Run ``Call`` jobs here: sequentially, in threads, or in worker processes."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"type": "inline", "mode": "processes", "n_jobs": -1},
                {"type": "inline", "mode": "sequential"},
                {"type": "inline", "mode": "threads", "n_jobs": 4, "timeout": 600},
            ]
        }
    )

    type: Literal["inline"] = Field(
        "inline", description="Selects this backend in config files.", examples=["inline"]
    )
    mode: Literal["sequential", "threads", "processes"] = Field(
        "sequential",
        description="sequential: one call at a time in a background thread; threads: "
        "n_jobs threads of this process; processes: n_jobs worker processes.",
        examples=["processes"],
    )
    n_jobs: int | None = Field(
        None,
        description="Parallel calls (threads or processes): -1 = all cores, -2 = all but "
        "one, …; default all cores (1 in sequential mode).",
        examples=[-1, 4],
    )
    capture_output: bool = Field(
        True,
        description="Keep what calls print for logs() and read_stdout(); False lets it "
        "reach this process's own stdout/stderr (handy with pdb).",
        examples=[True],
    )
    cancel_grace: float = Field(
        5.0,
        ge=0,
        le=600,
        description="Seconds a cancelled or timed-out call gets to stop before its worker "
        "process is killed (threads: before the run is recorded as ended).",
        examples=[5.0],
    )

    capabilities: ClassVar[frozenset[str]] = _CAPABILITIES
    preference: ClassVar[int] = 20
    # The mode and the degree of parallelism never change a call's result.
    cache_ignore: ClassVar[frozenset[str]] = frozenset(
        {"timeout", "mode", "n_jobs", "capture_output", "cancel_grace"}
    )

    @model_validator(mode="after")
    def _consistent(self) -> InlineConfig:
        if self.n_jobs == 0 or (self.n_jobs is not None and self.n_jobs < -_cores()):
            raise ValueError(
                f"n_jobs must be a positive number of workers or -1 (all cores), -2 (all but "
                f"one)…, not {self.n_jobs}"
            )
        if self.mode == "sequential" and self.n_jobs not in (None, 1):
            raise ValueError(
                "sequential mode runs one call at a time: drop n_jobs, or use "
                "mode: threads or mode: processes"
            )
        if self.mode != "processes" and (self.env_vars or self.working_dir):
            raise ValueError(
                f"env_vars and working_dir need their own processes: {self.mode} mode "
                "shares this process's environment; use mode: processes"
            )
        return self

    @property
    def workers(self) -> int:
        """The number of calls that run at once."""
        if self.mode == "sequential":
            return 1
        cores = _cores()
        if self.n_jobs is None:
            return cores
        return self.n_jobs if self.n_jobs > 0 else max(1, cores + 1 + self.n_jobs)

    def create(self) -> InlineBackend:
        """Return an :class:`InlineBackend` with these settings."""
        return InlineBackend(self)

    @classmethod
    def handle_class(cls) -> builtins.type[InlineRunHandle]:
        """Saved inline runs load into :class:`InlineRunHandle`."""
        return InlineRunHandle


class InlineBackend(Backend[InlineConfig]):
    """Hands ``Call`` jobs to the process's pool for the config's mode."""

    capabilities: ClassVar[frozenset[str]] = _CAPABILITIES

    def __init__(self, config: InlineConfig) -> None:
        super().__init__(config)
        self._pool_of: tuple[int, Pool] | None = None

    def _pool(self) -> Pool:
        """The shared pool for these settings, looked up once per process."""
        pid = os.getpid()
        if self._pool_of is None or self._pool_of[0] != pid:
            from ._inline_pool import get_pool

            config = self.config
            pool = get_pool(config.mode, config.workers, config.cancel_grace, config.capture_output)
            self._pool_of = (pid, pool)
        return self._pool_of[1]

    def _check(self, job: Job) -> Call:
        if not isinstance(job, Call):
            raise ConfigError(
                f"Job {job.name!r} is a command; the inline backend runs Call jobs (Python "
                "functions): use the local backend for commands, or wrap the work in a Call."
            )
        if job.inputs or job.outputs:
            raise ConfigError(
                f"Call {job.name!r} has inputs or outputs, but inline runs have no run folder: "
                "use the local backend, or pass the data as arguments."
            )
        mode = self.config.mode
        if mode != "processes" and (job.env or job.workdir):
            raise ConfigError(
                f"Call {job.name!r} sets env or workdir, which need a process of their own: "
                f"{mode} mode shares this one; use mode='processes'."
            )
        return job

    async def submit(self, job: Job) -> InlineRunHandle:
        """Queue the call on the pool and return its handle at once."""
        call = self._check(job)
        config = self.config
        timeout = float(config.timeout)
        if call.resources.walltime is not None:
            timeout = min(timeout, call.resources.walltime)
        env: dict[str, str] = {}
        payload = None
        if config.mode == "processes":
            payload = call.payload()  # pickled now: an unpicklable argument is our caller's error
            if config.env_vars or call.env:
                env = {**config.resolved_env(), **call.resolved_env()}
        else:
            call.function  # noqa: B018 (import a named target now, not in the thread)
        from ._inline_pool import InlineRun

        run = InlineRun(new_run_id(call.name), call, timeout, env, payload)
        if config.working_dir is not None:
            run.cwd = str(config.working_dir)
        _RUNS[run.run_id] = run
        self._pool().submit(run)
        return InlineRunHandle(run_id=run.run_id, job=call, config=config, run=run, pid=os.getpid())


class InlineRunHandle(RunHandle):
    """Handle of one inline run; only the process that started it can see the run."""

    backend_type: ClassVar[str] = "inline"

    def __init__(
        self,
        *,
        run_id: str,
        job: Job,
        config: InlineConfig,
        run: InlineRun | None,
        pid: int,
        submitted: float | None = None,
    ) -> None:
        super().__init__(run_id=run_id, job=job, config=config, state=RunState.PENDING)
        self._inline = config
        self._run = run
        self._pid = pid
        self._submitted = run.submitted if run is not None else submitted

    def _build_result(self, run: InlineRun) -> RunResult:
        outcome = run.outcome
        # Built from trusted parts without validation: it is on every call's path.
        result = RunResult.model_construct(
            run_id=self.run_id,
            state=run.state,
            exit_code=outcome.get("exit_code"),
            started_at=utc_time(run.started),
            ended_at=utc_time(run.ended),
            error=outcome.get("error"),
            value=outcome.get("value"),
            exception=outcome.get("exception"),
            traceback=outcome.get("traceback"),
            stdout=None,
            stderr=None,
            outputs=[],
        )
        return result.with_output("".join(run.stdout), "".join(run.stderr))

    async def refresh(self) -> RunState:
        """The run's state as its pool last set it (no I/O)."""
        if self._result is not None:
            return self._state
        run = self._run
        if run is None:
            where = f"process {self._pid}"
            self._finish(
                self._lost(
                    f"inline runs live in the process that started them ({where}); this "
                    "one is gone or is another process",
                    self._submitted,
                )
            )
        elif run.state.is_terminal:
            self._finish(self._build_result(run))
        else:
            self._set_state(run.state)
        return self._state

    async def _wait_done(self) -> RunResult:
        if self._run is not None:
            await self._run.done.wait()
        await self.refresh()
        assert self._result is not None
        return self._result

    @shielded_method
    async def cancel(self) -> None:
        """Stop the call: a queued one at once; a running one as the mode allows.

        Processes: the worker gets TERM, then KILL after ``cancel_grace``. Threads:
        the call gets an exception at its next Python bytecode; if it has not stopped
        after the grace (it is blocked in C code), the run is recorded CANCELLED and
        the thread finishes the call unseen. Runs to its end whatever cancels the
        caller (asyncio's own cancels included).
        """
        with anyio.CancelScope(shield=True):
            run = self._run
            if run is None or (await self.refresh()).is_terminal:
                return
            run.request_stop("cancelled")
            if self._inline.mode == "processes":
                await run.done.wait()
            else:
                with anyio.move_on_after(self._inline.cancel_grace + 0.5):
                    await run.done.wait()
                run.force_end("cancelled")
            await self.refresh()

    async def logs(
        self, stream: Stream = "stdout", *, follow: bool = False
    ) -> AsyncGenerator[str, None]:
        """What the call printed (``capture_output``); processes mode has it at the end."""
        check_stream(stream)
        run = self._run
        if run is None:
            return
        chunks = run.stdout if stream == "stdout" else run.stderr
        seen, buffer = 0, ""
        while True:
            ended = run.state.is_terminal
            while seen < len(chunks):
                buffer += chunks[seen]
                seen += 1
            *lines, buffer = buffer.split("\n")
            for line in lines:
                yield line
            if ended or not follow:
                break
            with anyio.move_on_after(0.1):
                await run.done.wait()
        if buffer:
            yield buffer

    def _record_data(self) -> dict[str, Any]:
        return {"pid": self._pid, "submitted": self._submitted, "mode": self._inline.mode}

    @classmethod
    def _from_record(
        cls, run_id: str, job: Job, config: BackendConfig, data: dict[str, Any]
    ) -> InlineRunHandle:
        if not isinstance(config, InlineConfig):
            raise TypeError(f"expected an InlineConfig, got {type(config).__name__}")
        pid = int(data["pid"])
        run = _RUNS.get(run_id) if pid == os.getpid() else None
        return cls(
            run_id=run_id,
            job=job,
            config=config,
            run=run,
            pid=pid,
            submitted=float(data["submitted"]),
        )
