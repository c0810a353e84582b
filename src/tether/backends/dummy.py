"""Deterministic simulated runs, for users' own tests, demos and docs.

A dummy run executes nothing: its life is a function of the clock and its config
(queue time, duration, outcome, output), so any process that loads its saved
handle sees the same run. It honours the whole backend contract: it has a run
folder, can be cancelled from any process (a marker file in the folder), times
out, writes its stdout/stderr and output files when it ends, and becomes LOST
when its folder disappears.
"""

from __future__ import annotations

import builtins
import json
import os
import stat
import time
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any, ClassVar, Literal

import anyio
from pydantic import ConfigDict, Field, field_validator

from .._files import default_runs_dir, write_atomic, write_json_atomic
from .._runs import chosen_run_id, make_run_dir, stage_inputs
from .._shield import shielded_method
from ..backend import Backend
from ..call import refuse_calls
from ..config import BackendConfig
from ..errors import RecordError
from ..handle import RunHandle, Stream, check_stream
from ..job import Job
from ..records import write_record
from ..result import RunResult, RunState, utc_time

_CAPABILITIES = frozenset(
    {"detached", "reattach", "find", "cancel", "logs_follow", "commands", "timeout", "simulated"}
)


class DummyConfig(BackendConfig):
    """Simulated runs with a fixed queue time, duration, outcome and output."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "type": "dummy",
                    "duration": 2.0,
                    "stdout": "step 1\nstep 2\n",
                    "outputs": {"result.txt": "42\n"},
                },
                {"type": "dummy", "queue_time": 1.0, "outcome": "failed", "exit_code": 3},
            ]
        }
    )

    type: Literal["dummy"] = Field(
        "dummy", description="Selects this backend in config files.", examples=["dummy"]
    )
    queue_time: float = Field(0.0, ge=0, description="Seconds a run stays PENDING.", examples=[0.5])
    duration: float = Field(0.0, ge=0, description="Seconds a run stays RUNNING.", examples=[2.0])
    outcome: Literal["succeeded", "failed", "lost"] = Field(
        "succeeded",
        description="How a run ends when it is neither cancelled nor timed out.",
        examples=["failed"],
    )
    exit_code: int | None = Field(
        None,
        description="Exit code reported; default 0 when succeeded, 1 when failed.",
        examples=[3],
    )
    stdout: str = Field(
        "",
        description="Text the run writes to stdout, line by line over time.",
        examples=["step 1\nstep 2\n"],
    )
    stderr: str = Field(
        "", description="Text the run writes to stderr.", examples=["warning: coarse grid\n"]
    )
    outputs: dict[str, str] = Field(
        default_factory=dict,
        description="Output files (relative path → content) written into the run folder.",
        examples=[{"result.txt": "42\n"}],
    )
    runs_dir: Path | None = Field(
        None, description="Folder for run folders (as LocalConfig).", examples=["~/tether-runs"]
    )

    capabilities: ClassVar[frozenset[str]] = _CAPABILITIES
    preference: ClassVar[int] = 1000  # simulated runs are never recommended
    cache_ignore: ClassVar[frozenset[str]] = frozenset({"timeout", "runs_dir"})

    @field_validator("outputs")
    @classmethod
    def _relative(cls, outputs: dict[str, str]) -> dict[str, str]:
        for name in outputs:
            path = Path(name)
            if not name or path.is_absolute() or ".." in path.parts:
                raise ValueError(f"output {name!r} must be a relative path inside the run folder")
        return outputs

    def create(self) -> DummyBackend:
        """Return a :class:`DummyBackend` with these settings."""
        return DummyBackend(self)

    @classmethod
    def handle_class(cls) -> builtins.type[DummyRunHandle]:
        """Saved dummy runs load into :class:`DummyRunHandle`."""
        return DummyRunHandle


class DummyBackend(Backend[DummyConfig]):
    """Makes simulated runs; always usable."""

    capabilities: ClassVar[frozenset[str]] = _CAPABILITIES

    async def submit(self, job: Job, *, run_id: str | None = None) -> DummyRunHandle:
        """Create the run folder and start the simulated clock.

        ``run_id`` (default: a new one) names the run and its folder; see :meth:`find`.
        """
        refuse_calls(job, "dummy")
        run_id = chosen_run_id(run_id, job.name)
        run_dir = make_run_dir(self._runs_dir(), run_id)
        stage_inputs(job.inputs, run_dir)
        timeout = float(self.config.timeout)
        if job.resources.walltime is not None:
            timeout = min(timeout, job.resources.walltime)
        handle = DummyRunHandle(
            run_id=run_id,
            job=job,
            config=self.config,
            run_dir=run_dir,
            submitted_at=time.time(),
            timeout=timeout,
        )
        write_record(run_dir / "handle.json", handle.to_record(), sync=False)
        return handle

    def _runs_dir(self) -> Path:
        return (self.config.runs_dir or default_runs_dir()).expanduser().absolute()

    async def find(self, job: Job, run_id: str) -> DummyRunHandle | None:
        """The run ``submit(job, run_id=run_id)`` made: a simulated run exists once
        its record does, so without ``handle.json`` it never started."""
        record = self._runs_dir() / chosen_run_id(run_id, job.name) / "handle.json"
        if not record.is_file():
            return None
        from ..registry import load_handle

        handle = await load_handle(record)
        if not isinstance(handle, DummyRunHandle):
            raise RecordError(f"'{record}' is a {handle.backend_type!r} run, not a dummy one.")
        return handle


class DummyRunHandle(RunHandle):
    """Handle of a simulated run; its state is computed from the clock."""

    backend_type: ClassVar[str] = "dummy"
    #: wait() refreshes until the end, so it reports RUNNING by itself.
    _wait_reports_running: ClassVar[bool] = True

    def __init__(
        self,
        *,
        run_id: str,
        job: Job,
        config: DummyConfig,
        run_dir: Path,
        submitted_at: float,
        timeout: float,
    ) -> None:
        super().__init__(run_id=run_id, job=job, config=config, run_dir=run_dir)
        self._dummy = config
        self._dir = run_dir
        self._submitted = submitted_at
        self._timeout = timeout

    # -- the simulated clock --------------------------------------------------------

    @property
    def _start(self) -> float:
        return self._submitted + self._dummy.queue_time

    @property
    def _end(self) -> float:
        return self._start + min(self._dummy.duration, self._timeout)

    def _cancelled_at(self) -> float | None:
        try:
            data = json.loads((self._dir / "cancelled.json").read_text())
            return float(data["at"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _not_ours(self) -> str | None:
        """Why the run folder is not this run's own, or None if it is.

        A record can come from anywhere: files are written into its run folder only
        when the folder is a real folder of this user whose ``handle.json`` names
        this run.
        """
        try:
            st = os.stat(self._dir, follow_symlinks=False)
            data = json.loads((self._dir / "handle.json").read_bytes()[: 1 << 20])
        except (OSError, ValueError):
            data, st = None, None
        if (
            st is not None
            and stat.S_ISDIR(st.st_mode)
            and st.st_uid == os.geteuid()
            and isinstance(data, dict)
            and data.get("run_id") == self.run_id
        ):
            return None
        return (
            f"run folder '{self._dir}' is not this run's (no record of it there); not touching it"
        )

    def _state_at(self, now: float) -> RunState:
        if not self._dir.is_dir():
            return RunState.LOST
        cancelled = self._cancelled_at()
        if cancelled is not None and cancelled < self._end:
            return RunState.CANCELLED
        if now < self._start:
            return RunState.PENDING
        if now < self._end:
            return RunState.RUNNING
        if self._dummy.duration > self._timeout:
            return RunState.TIMED_OUT
        return {
            "succeeded": RunState.SUCCEEDED,
            "failed": RunState.FAILED,
            "lost": RunState.LOST,
        }[self._dummy.outcome]

    def _lines(self, stream: Stream) -> list[str]:
        text = self._dummy.stdout if stream == "stdout" else self._dummy.stderr
        return text.splitlines()

    def _line_time(self, index: int, count: int) -> float:
        """When line ``index`` of ``count`` appears: spread evenly over the duration."""
        return self._start + min(self._dummy.duration, self._timeout) * index / max(count, 1)

    def _finalize(self, state: RunState) -> RunResult:
        if state is RunState.LOST:
            return RunResult(run_id=self.run_id, state=state, error="the dummy run was lost")
        cancelled = self._cancelled_at()
        ended = cancelled if state is RunState.CANCELLED and cancelled is not None else self._end
        stdout, stderr = self._dir / "stdout", self._dir / "stderr"
        outputs: list[Path] = []
        if not stdout.exists():  # written once, atomically, by whoever observes the end
            for path, stream in ((stdout, "stdout"), (stderr, "stderr")):
                lines = self._lines(stream)  # type: ignore[arg-type]
                visible = [
                    line for i, line in enumerate(lines) if self._line_time(i, len(lines)) <= ended
                ]
                write_atomic(path, "".join(f"{line}\n" for line in visible).encode())
        if state is RunState.SUCCEEDED:
            for name, content in self._dummy.outputs.items():
                target = self._dir / name
                target.parent.mkdir(parents=True, exist_ok=True)
                if not target.exists():
                    write_atomic(target, content.encode(), mode=0o644)
                outputs.append(target)
        code = self._dummy.exit_code
        if state is RunState.SUCCEEDED:
            code, error = (0 if code is None else code), None
        elif state is RunState.FAILED:
            code = 1 if code is None else code
            error = f"exit code {code} (simulated failure)"
        elif state is RunState.TIMED_OUT:
            code, error = None, f"timed out after {self._timeout:g}s"
        else:
            code, error = None, "cancelled"
        return RunResult(
            run_id=self.run_id,
            state=state,
            exit_code=code,
            started_at=utc_time(self._start) if ended >= self._start else None,
            ended_at=utc_time(ended),
            stdout=stdout,
            stderr=stderr,
            outputs=outputs,
            error=error,
        )

    # -- the contract ---------------------------------------------------------------

    async def refresh(self) -> RunState:
        """Compute the state from the clock and the cancel marker."""
        if self._result is not None:
            return self._state
        if self._dir.is_dir() and (why := self._not_ours()) is not None:
            self._finish(self._lost(why))
            return self._state
        state = self._state_at(time.time())
        if state.is_terminal:
            self._finish(self._finalize(state))
        else:
            self._set_state(state)
        return self._state

    async def _wait_done(self) -> RunResult:
        while not (await self.refresh()).is_terminal:  # noqa: ASYNC110
            # Sleep to the simulated end; wake now and then for a cancel made elsewhere
            # (another process's cancel is a file, not an event we could await).
            await anyio.sleep(max(0.0, min(self._end - time.time(), 0.25)) or 0.001)
        assert self._result is not None
        return self._result

    @shielded_method
    async def cancel(self) -> None:
        """Mark the run cancelled (visible to every process); no-op when terminal."""
        with anyio.CancelScope(shield=True):
            if (await self.refresh()).is_terminal:
                return
            if self._cancelled_at() is None:
                write_json_atomic(self._dir / "cancelled.json", {"at": time.time()})
            await self.refresh()

    async def logs(
        self, stream: Stream = "stdout", *, follow: bool = False
    ) -> AsyncGenerator[str, None]:
        """The configured lines that have appeared so far; ``follow`` waits for the rest."""
        check_stream(stream)
        lines = self._lines(stream)
        for index, line in enumerate(lines):
            due = self._line_time(index, len(lines))
            while time.time() < due:
                if not follow or (await self.refresh()).is_terminal:
                    return
                await anyio.sleep(min(due - time.time(), 0.25))
            if self._state is RunState.CANCELLED and (self._cancelled_at() or 0) < due:
                return
            yield line

    # -- records ----------------------------------------------------------------

    def _record_data(self) -> dict[str, Any]:
        return {
            "run_dir": str(self._dir),
            "submitted_at": self._submitted,
            "timeout": self._timeout,
        }

    @classmethod
    def _from_record(
        cls, run_id: str, job: Job, config: BackendConfig, data: dict[str, Any]
    ) -> DummyRunHandle:
        if not isinstance(config, DummyConfig):
            raise TypeError(f"expected a DummyConfig, got {type(config).__name__}")
        return cls(
            run_id=run_id,
            job=job,
            config=config,
            run_dir=Path(data["run_dir"]),
            submitted_at=float(data["submitted_at"]),
            timeout=float(data["timeout"]),
        )
