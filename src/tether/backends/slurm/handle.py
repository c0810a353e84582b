"""``SlurmRunHandle``: one Slurm job, re-attached by job id from any process.

The run's outcome is its folder's ``exit.json``, written on the node by the run's
supervisor; the queue (``squeue``, through this loop's watcher) only says whether
the job is pending, running or gone. A job gone from the queue without an
outcome, after ``lost_grace`` (a shared file system may lag), is LOST, with what
Slurm said about it; one Slurm ended for its time limit is TIMED_OUT.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any, ClassVar

import anyio

from ..._files import write_json_once
from ..._outcome import failure_reason, supervised_result
from ..._runs import last_line, tail_lines
from ..._shield import shielded_method
from ...config import BackendConfig
from ...errors import BackendError
from ...handle import RunHandle, Stream, check_stream
from ...job import Job
from ...result import RunResult, RunState, utc_time
from . import _commands as cmd
from . import _watcher
from ._commands import QueueEntry, QueueUnavailable
from .config import SlurmConfig

#: Seconds cancel() waits for the job to leave the queue after it was killed.
_GONE_WAIT = 60.0


class SlurmRunHandle(RunHandle):
    """Handle of one Slurm job (or array member); see the module docstring."""

    backend_type: ClassVar[str] = "slurm"
    #: The watcher that wait() drives moves a started job to RUNNING.
    _wait_reports_running: ClassVar[bool] = True

    def __init__(
        self,
        *,
        run_id: str,
        job: Job,
        config: SlurmConfig,
        run_dir: Path,
        cwd: Path,
        job_id: str,
        job_name: str,
        script: Path,
        submitted_at: float,
        timeout: float,
    ) -> None:
        super().__init__(
            run_id=run_id, job=job, config=config, state=RunState.PENDING, run_dir=run_dir
        )
        self._slurm = config
        self._dir = run_dir
        self._cwd = cwd
        self._job_id = job_id
        self._job_name = job_name
        self._script = script
        self._submitted_at = submitted_at
        self._timeout = timeout
        self._entry: QueueEntry | None = None
        #: When the job was first seen out of the queue with no outcome (monotonic).
        self._gone_since: float | None = None
        #: When logs(follow=True) last asked the queue (monotonic).
        self._logs_asked = 0.0

    @property
    def job_id(self) -> str:
        """Slurm's job id ("123", or "123_4" for a member of an array)."""
        return self._job_id

    @property
    def slurm_state(self) -> str | None:
        """The job's state as squeue last reported it ("PENDING", "RUNNING", …)."""
        return None if self._entry is None else self._entry.state

    def _not_ours(self, entry: QueueEntry) -> str | None:
        """Why the job the record names is not this run's, or None if it is.

        A record is input, not authority: a job is this run's only when it carries
        the run's job name and runs the run's batch script.
        """
        if entry.name == self._job_name and entry.command.strip() == str(self._script):
            return None
        return (
            f"job {self._job_id} is not this run's (named {entry.name!r}, expected "
            f"{self._job_name!r}); not touching it"
        )

    # -- the outcome -------------------------------------------------------------------

    def _read_exit(self) -> dict[str, Any] | None:
        try:
            data = json.loads((self._dir / "exit.json").read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _result_from_exit(self, data: dict[str, Any]) -> RunResult:
        reason, code = data.get("reason"), data.get("exit_code")
        stdout, stderr = self._dir / "stdout", self._dir / "stderr"
        error: str | None = None
        if reason == "timeout":
            state = RunState.TIMED_OUT
            error = f"timed out after {self._timeout:g}s (the job's process tree was stopped)"
        elif reason == "cancelled" and (self._dir / "stop.json").exists():
            state, error = RunState.CANCELLED, "cancelled"
        elif reason == "cancelled":
            # A TERM from outside tether: Slurm's time limit, a preemption, an scancel.
            said = self._entry.state if self._entry is not None else None
            if said == "TIMEOUT":
                state, error = RunState.TIMED_OUT, "timed out: Slurm's time limit ended the job"
            else:
                state = RunState.CANCELLED
                error = (
                    f"cancelled by Slurm ({said})"
                    if said
                    else "cancelled by a signal from outside tether (scancel, preemption "
                    "or Slurm's time limit)"
                )
        elif reason == "exited" and code == 0:
            state = RunState.SUCCEEDED
        else:
            state = RunState.FAILED
            error = data.get("error") or failure_reason(code, stderr)
        return supervised_result(
            data,
            state,
            error,
            run_id=self.run_id,
            job=self._job,
            run_dir=self._dir,
            cwd=self._cwd,
            started=self._submitted_at,
            stdout=stdout,
            stderr=stderr,
        )

    def _no_outcome(self) -> RunResult:
        """The result of a job that left the queue without recording its outcome."""
        said = self._entry
        if said is not None and said.state == "TIMEOUT":
            return RunResult(
                run_id=self.run_id,
                state=RunState.TIMED_OUT,
                started_at=utc_time(self._submitted_at),
                error="timed out: Slurm's time limit ended the job before its supervisor "
                "recorded an outcome",
            )
        where = f"Slurm says {said.state}" if said is not None else "it left the queue"
        why = f", reason {said.reason}" if said is not None and said.reason != "None" else ""
        slurm_log = last_line(self._dir / ".slurm-output")
        tail = f"; its Slurm output ends: {slurm_log}" if slurm_log else ""
        return self._lost(
            f"job {self._job_id} ended ({where}{why}) without recording an outcome in "
            f"{self._dir}{tail}",
            self._submitted_at,
        )

    def _apply(self, entry: QueueEntry | None, *, purged_means_gone: bool) -> None:
        """Move the state on from what the queue says (after the outcome file was read)."""
        if entry is not None and (why := self._not_ours(entry)) is not None:
            self._finish(self._lost(why, self._submitted_at))
            return
        self._entry = entry if entry is not None else self._entry
        if entry is not None and entry.active:
            self._gone_since = None
            if not entry.pending and self._state is RunState.PENDING:
                self._set_state(RunState.RUNNING)
            return
        now = time.monotonic()
        if entry is None and purged_means_gone:
            # Not even listed as finished: it ended longer ago than the controller
            # keeps jobs (MinJobAge), far past any file-system lag.
            self._gone_since = now - self._slurm.lost_grace
        if self._gone_since is None:
            self._gone_since = now
        if now - self._gone_since >= self._slurm.lost_grace:
            data = self._read_exit()
            self._finish(self._result_from_exit(data) if data else self._no_outcome())

    # -- observing ---------------------------------------------------------------------

    async def refresh(self) -> RunState:
        """Read the outcome file, or ask the queue (one squeue shared with concurrent
        refreshes; answered from the watcher when it just asked)."""
        if self._result is not None:
            return self._state
        data = self._read_exit()
        if data is not None:
            self._finish(self._result_from_exit(data))
            return self._state
        if not self._dir.is_dir():
            self._finish(self._lost(f"run folder {self._dir} no longer exists", self._submitted_at))
            return self._state
        loop_watcher = _watcher.watcher(self._slurm.poll_interval, self._slurm.poll_interval_max)
        try:
            entry = await loop_watcher.lookup(self._job_id)
        except QueueUnavailable:
            return self._state  # nothing known; the state stays what it was
        finally:
            _watcher.release(loop_watcher)
        if (data := self._read_exit()) is not None:
            self._finish(self._result_from_exit(data))
        else:
            self._apply(entry, purged_means_gone=self._submitted_long_ago())
        return self._state

    def _submitted_long_ago(self) -> bool:
        return time.time() - self._submitted_at > max(60.0, self._slurm.lost_grace)

    async def _wait_done(self) -> RunResult:
        if (await self.refresh()).is_terminal:
            assert self._result is not None
            return self._result
        loop_watcher = _watcher.watcher(self._slurm.poll_interval, self._slurm.poll_interval_max)
        tracked = loop_watcher.track(self._job_id, self._dir / "exit.json")
        try:
            while self._result is None:
                await loop_watcher.next_news(tracked)
                data = self._read_exit()
                if data is not None:
                    self._finish(self._result_from_exit(data))
                elif not self._dir.is_dir():
                    self._finish(
                        self._lost(f"run folder {self._dir} no longer exists", self._submitted_at)
                    )
                elif tracked.seen_at is not None:
                    self._apply(tracked.entry, purged_means_gone=self._submitted_long_ago())
                    if self._gone_since is not None:
                        tracked.news = True  # keep looking at the grace's pace
                        await anyio.sleep(min(1.0, self._slurm.lost_grace / 4 + 0.05))
        finally:
            loop_watcher.untrack(tracked)
            _watcher.release(loop_watcher)
        return self._result

    async def _wait_or_end(self, seconds: float) -> bool:
        """Sleep up to ``seconds`` (less if the outcome appears); True once terminal."""
        step = min(seconds, 0.1)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not (self._dir / "exit.json").exists():  # noqa: ASYNC110 (a file another machine writes)
            await anyio.sleep(step)
        if (self._dir / "exit.json").exists():
            return (await self.refresh()).is_terminal
        if time.monotonic() - self._logs_asked >= self._slurm.poll_interval:
            self._logs_asked = time.monotonic()
            return (await self.refresh()).is_terminal
        return False

    # -- acting ------------------------------------------------------------------------

    @shielded_method
    async def cancel(self) -> None:
        """End the job: TERM to its supervisor (which stops the whole command tree,
        KILL after ``cancel_grace``), then scancel; returns once Slurm lists the job
        as finished. Idempotent and shielded; works from a re-attached handle too."""
        if (await self.refresh()).is_terminal:
            return
        try:
            await self._cancel()
        except _NotOurs:
            return  # LOST already, and the job is left alone
        await self.refresh()

    async def _cancel(self) -> None:
        write_json_once(self._dir / "stop.json", {"reason": "cancelled", "at": time.time()})
        entry = await self._look()
        if entry is not None and entry.active and not entry.pending:
            # Running: the supervisor turns TERM into TERM-grace-KILL and records it.
            await cmd.scancel(
                self._job_id, "--batch", "--signal=TERM", limit=self._slurm.max_submits
            )
            with anyio.move_on_after(self._slurm.cancel_grace + 10.0):
                asked = time.monotonic()
                while self._read_exit() is None:
                    await anyio.sleep(0.1)
                    if time.monotonic() - asked >= 0.5:  # it may end without an outcome
                        asked = time.monotonic()
                        if (now := await self._look()) is None or not now.active:
                            break
        # Whatever is left (a pending job; a supervisor that did not answer): Slurm's
        # own cancel, which never runs a pending job and kills a running one.
        said = await cmd.scancel(self._job_id, limit=self._slurm.max_submits)
        if said is not None and "already completing or completed" not in said:
            entry = await self._look()
            if entry is not None and entry.active:
                raise BackendError(f"scancel of job {self._job_id} failed: {said}")
        with anyio.move_on_after(_GONE_WAIT):
            while (entry := await self._look()) is not None and entry.active:  # noqa: ASYNC110
                await anyio.sleep(0.2)  # the controller's news, asked again
        if entry is not None and entry.active:
            raise BackendError(
                f"job {self._job_id} is still {entry.state} {_GONE_WAIT:g}s after scancel; "
                "cancel again, or ask the cluster's admins"
            )
        if self._read_exit() is None:  # it never ran, or its supervisor was killed
            write_json_once(
                self._dir / "exit.json",
                {
                    "reason": "cancelled",
                    "exit_code": None,
                    "signal": signal.SIGKILL.value if entry is not None else None,
                    "started": self._submitted_at,
                    "ended": time.time(),
                    "error": None,
                    "supervisor": "orchestrator",
                },
            )

    async def _look(self) -> QueueEntry | None:
        """The queue's entry for the job now (None: not listed)."""
        loop_watcher = _watcher.watcher(self._slurm.poll_interval, self._slurm.poll_interval_max)
        try:
            entry = await loop_watcher.lookup(self._job_id)  # shared by concurrent cancels
        except QueueUnavailable as exc:
            raise BackendError(f"cannot cancel job {self._job_id}: {exc}") from exc
        finally:
            _watcher.release(loop_watcher)
        if entry is not None:
            if (why := self._not_ours(entry)) is not None:
                self._finish(self._lost(why, self._submitted_at))
                raise _NotOurs(why)
            self._entry = entry
        return entry

    async def logs(
        self, stream: Stream = "stdout", *, follow: bool = False
    ) -> AsyncGenerator[str, None]:
        """Lines of the run's stdout or stderr file (written on the node as the job
        runs); ``follow`` streams them until the run has ended."""
        check_stream(stream)
        async for line in tail_lines(
            self._dir / stream, follow=follow, wait_more=lambda: self._wait_or_end(0.25)
        ):
            yield line

    # -- records -----------------------------------------------------------------------

    def _record_data(self) -> dict[str, Any]:
        return {
            "run_dir": str(self._dir),
            "cwd": str(self._cwd),
            "job_id": self._job_id,
            "job_name": self._job_name,
            "script": str(self._script),
            "submitted_at": self._submitted_at,
            "timeout": self._timeout,
        }

    @classmethod
    def _from_record(
        cls, run_id: str, job: Job, config: BackendConfig, data: dict[str, Any]
    ) -> SlurmRunHandle:
        if not isinstance(config, SlurmConfig):
            raise TypeError(f"expected a SlurmConfig, got {type(config).__name__}")
        job_id = str(data["job_id"])
        if not all(part.isdigit() for part in job_id.split("_", 1)):
            raise ValueError(f"job_id {job_id!r} is not a Slurm job id")
        return cls(
            run_id=run_id,
            job=job,
            config=config,
            run_dir=Path(data["run_dir"]),
            cwd=Path(data["cwd"]),
            job_id=job_id,
            job_name=str(data["job_name"]),
            script=Path(data["script"]),
            submitted_at=float(data["submitted_at"]),
            timeout=float(data["timeout"]),
        )


class _NotOurs(Exception):
    """The job a record names is not the run's own (the run is LOST already)."""
