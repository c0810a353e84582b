"""``DaskRunHandle``: one run on a Dask scheduler, re-attached by its run id.

The scheduler holds the run as a published dataset named by the run id (the
task's key too); any client of the scheduler gets the run's future from it. The
task's return value is the run's outcome (see ``_task``). A run the scheduler no
longer knows (it restarted, the run was forgotten) is LOST, with the reason;
one cancelled by tether (``stop.json`` in the run folder) stays CANCELLED.

A scheduler that cannot be reached is not an answer: ``refresh()`` keeps the last
state, and ``wait()`` keeps trying (with back-off) until the scheduler answers or
the run's own record of its end (``exit.json``, written on the worker) is in the
run folder, which gives the result without the scheduler, except for the value
of a ``Call`` run in a worker's thread, which only the scheduler holds.

States: PENDING while the scheduler has the task waiting (for a worker, for
resources), RUNNING while a worker processes it, then the terminal state its
outcome says.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any, ClassVar

import anyio

from ... import _worker as worker
from ..._files import write_json_once
from ..._outcome import failure_reason
from ..._runs import collect_outputs, tail_lines
from ..._shield import shielded_method
from ...call import Call, decode_outcome, outcome_fields
from ...config import BackendConfig
from ...errors import BackendError
from ...handle import RunHandle, Stream, check_stream
from ...job import Job
from ...result import RunResult, RunState, utc_time
from . import _client
from ._task import STARTED_FILE, cancel_event_name, stop_supervisor
from .config import DaskConfig

#: Seconds cancel() waits beyond the grace for the task to report its end.
_CANCEL_MARGIN = 10.0
#: Longest pause of wait() between tries to reach a scheduler that does not answer.
_RETRY_MAX = 10.0


class DaskRunHandle(RunHandle):
    """Handle of one run on a Dask scheduler; see the module docstring."""

    backend_type: ClassVar[str] = "dask"

    def __init__(
        self,
        *,
        run_id: str,
        job: Job,
        config: DaskConfig,
        address: str,
        embedded_pid: int | None,
        run_dir: Path,
        cwd: Path,
        submitted_at: float,
        timeout: float,
    ) -> None:
        super().__init__(
            run_id=run_id, job=job, config=config, state=RunState.PENDING, run_dir=run_dir
        )
        self._dask = config
        self._address = address
        self._embedded_pid = embedded_pid
        self._dir = run_dir
        self._cwd = cwd
        self._submitted_at = submitted_at
        self._timeout = timeout
        self._last_look = 0.0

    @property
    def address(self) -> str:
        """The address of the scheduler that holds the run."""
        return self._address

    # -- the outcome -------------------------------------------------------------------

    def _gone_elsewhere(self) -> str | None:
        """Why an embedded cluster's run cannot be reached from here, or None."""
        if self._embedded_pid is None:
            return None
        if self._embedded_pid == os.getpid() and self._address in _client.EMBEDDED_ADDRESSES:
            return None
        return (
            f"the run was on the embedded Dask cluster of process {self._embedded_pid}, "
            "whose runs end with it; use an external scheduler (address=...) for runs that "
            "outlive their process"
        )

    def _result_from(self, data: dict[str, Any], called: dict[str, Any] | None = None) -> RunResult:
        """The result of the task's outcome ``data``; a Call's fields are decoded from
        its ``outcome`` pickle, or given as ``called`` (read from the run folder)."""
        reason, code, sig = data.get("reason"), data.get("exit_code"), data.get("signal")
        stdout, stderr = self._dir / "stdout", self._dir / "stderr"
        error: str | None = None
        abandoned = " (its thread was abandoned, still running)" if data.get("abandoned") else ""
        if reason == "timeout":
            state = RunState.TIMED_OUT
            error = f"timed out after {self._timeout:g}s on the worker{abandoned}"
        elif reason == "cancelled":
            state, error = RunState.CANCELLED, f"cancelled{abandoned}"
        elif reason == "worker-lost":
            return self._lost(
                "the Dask worker running the run died; what was left of it was stopped, "
                "and it was not run again",
                self._submitted_at,
            )
        elif reason == "released":
            return self._lost(
                "the Dask scheduler released the run's task before it ended (cancelled or "
                "forgotten outside tether)",
                self._submitted_at,
            )
        elif code == 0:
            state = RunState.SUCCEEDED
        else:
            state = RunState.FAILED
            error = data.get("error") or failure_reason(-sig if sig else code, stderr)
        is_call = isinstance(self._job, Call) and reason == "exited"
        if called is None and is_call and data.get("outcome"):
            # The outcome came through the scheduler, which every client trusts.
            called = decode_outcome(data["outcome"])
            called.pop("exit_code")
        called = dict(called or {})
        if called:
            state = RunState.SUCCEEDED if called.pop("ok") else RunState.FAILED
            error = called.pop("error")
        outputs: list[Path] = []
        if self._job.outputs and self._dir.is_dir():
            outputs = collect_outputs(self._job.outputs, self._cwd, self._dir)
        return RunResult(
            **called,
            run_id=self.run_id,
            state=state,
            exit_code=code if isinstance(code, int) else None,
            started_at=utc_time(data.get("started", self._submitted_at)),
            ended_at=utc_time(data.get("ended")),
            stdout=stdout if stdout.exists() else None,
            stderr=stderr if stderr.exists() else None,
            outputs=outputs,
            error=error,
        )

    def _recorded_end(self) -> RunResult | None:
        """The run's result from its folder's ``exit.json`` (written on the worker),
        for when the scheduler cannot be reached; None while the run has not ended, or
        when only the scheduler holds what it returned (a Call in a worker's thread)."""
        try:
            data = json.loads((self._dir / "exit.json").read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict):
            return None
        if data.get("reason") == "exec_failed":  # the supervisor's word, before the task's
            data["reason"] = "exited"
        called: dict[str, Any] | None = None
        if isinstance(self._job, Call) and data.get("reason") == "exited":
            if self._dask.call_mode == "thread":
                return None
            called = outcome_fields(self._dir / worker.OUTCOME_FILE)
        return self._result_from(data, called)

    def _unknown(self, why: str) -> RunResult:
        """The result of a run the scheduler does not (or no longer) know."""
        if (self._dir / "stop.json").exists():  # tether cancelled it before it ran
            return RunResult(
                run_id=self.run_id,
                state=RunState.CANCELLED,
                started_at=utc_time(self._submitted_at),
                ended_at=utc_time(time.time()),
                error="cancelled",
            )
        return self._lost(why, self._submitted_at)

    async def _future(self, client: Any) -> Any | None:
        """The run's future from the scheduler's published datasets, or None."""
        try:
            return await client.get_dataset(self.run_id)
        except KeyError:
            return None

    async def _settle(self, client: Any, future: Any, *, block: bool) -> None:
        """Move the state on from the scheduler's task (awaiting its end when ``block``)."""
        cancelled_error = _client.distributed("client").FutureCancelledError
        if not block:
            # The scheduler's own word: a fresh future learns its status only later.
            states = await client.scheduler.get_task_status(keys=[self.run_id])
            task_state = states.get(self.run_id)
            if task_state == "processing":
                if self._state is RunState.PENDING:
                    self._set_state(RunState.RUNNING)
                return
            if task_state in ("waiting", "queued", "no-worker", "released"):
                return
        try:
            data = await future
        except cancelled_error as exc:
            if getattr(exc, "reason", None) == "scheduler-connection-lost" or (
                client.status != "running"
            ):  # this client lost the scheduler: no word on the run
                raise BackendError(f"lost the Dask scheduler at {self._address}") from exc
            self._finish(self._unknown(f"the Dask scheduler cancelled the run's task ({exc})"))
            return
        except Exception as exc:  # the task itself failed: its worker died (KilledWorker)
            self._finish(
                self._lost(
                    f"the run's Dask task failed without an outcome: {type(exc).__name__}: {exc}",
                    self._submitted_at,
                )
            )
            return
        self._finish(self._result_from(data))

    def _not_known(self) -> RunResult:
        return self._unknown(
            f"the Dask scheduler at {self._address} does not know run {self.run_id} (it "
            "restarted, or the run was forgotten)"
        )

    # -- observing ---------------------------------------------------------------------

    async def refresh(self) -> RunState:
        """Ask the scheduler for the run's future and read its state (one connection)."""
        if self._result is not None:
            return self._state
        if (why := self._gone_elsewhere()) is not None:
            self._finish(self._unknown(why))
            return self._state
        with contextlib.suppress(BackendError):  # not an answer: keep the last state
            await self._look(block=False)
        return self._state

    async def _look(self, *, block: bool) -> None:
        """One look at the run through the scheduler (awaiting its end when ``block``).

        Raises:
            BackendError: the scheduler cannot be reached (or was lost meanwhile).
        """
        async with _client.connect(self._address, self._dask) as client:
            try:
                future = await self._future(client)
                if future is None:
                    self._finish(self._not_known())
                else:
                    await self._settle(client, future, block=block)
            except (OSError, TimeoutError) as exc:  # the connection broke (CommClosedError)
                raise BackendError(f"lost the Dask scheduler at {self._address}: {exc}") from exc

    async def _wait_done(self) -> RunResult:
        if (why := self._gone_elsewhere()) is not None:
            return self._finish(self._unknown(why))
        pause = 0.5
        while self._result is None:
            try:
                await self._look(block=True)
            except BackendError:
                if (ended := self._recorded_end()) is not None:
                    self._finish(ended)
                    break
                await self._wait_or_file(pause)  # then try the scheduler again
                pause = min(pause * 2, _RETRY_MAX)
        assert self._result is not None
        return self._result

    async def _wait_or_file(self, seconds: float) -> None:
        """Sleep up to ``seconds``, less once the run's ``exit.json`` appears."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not (self._dir / "exit.json").exists():  # noqa: ASYNC110 (a file the worker writes)
            await anyio.sleep(0.05)

    async def _wait_or_end(self, seconds: float) -> bool:
        """Sleep up to ``seconds`` (less once the task wrote its end); True once terminal."""
        await self._wait_or_file(seconds)
        if (self._dir / "exit.json").exists() or time.monotonic() - self._last_look >= 2.0:
            self._last_look = time.monotonic()
            return (await self.refresh()).is_terminal
        return False

    # -- acting ------------------------------------------------------------------------

    @shielded_method
    async def cancel(self) -> None:
        """Stop the run: set its cancel event, which the task on the worker watches
        (TERM to the run's supervisor, which stops its whole tree, KILL after
        ``cancel_grace``); a task that does not answer in time, or that no worker
        has taken yet, is cancelled on the scheduler
        (and unpublished). Idempotent and shielded; works from any client (a
        re-attached handle too). The event stays set until :meth:`forget`, so that a
        late copy of the task (after a worker's death) never starts the work.

        With the scheduler unreachable, a run whose supervisor is on this machine is
        stopped directly (its run folder names it); otherwise the
        :class:`BackendError` says the scheduler did not answer."""
        if (await self.refresh()).is_terminal:
            return
        write_json_once(self._dir / "stop.json", {"reason": "cancelled", "at": time.time()})
        try:
            await self._cancel_through_scheduler()
        except BackendError:
            started = str(self._dir / STARTED_FILE)
            grace = self._dask.cancel_grace
            stopped = await anyio.to_thread.run_sync(stop_supervisor, started, self.run_id, grace)
            ended = self._recorded_end()
            if ended is None and not stopped:
                raise
            self._finish(ended if ended is not None else self._unknown("cancelled"))

    async def _cancel_through_scheduler(self) -> None:
        """cancel()'s way when the scheduler answers (see there).

        Raises:
            BackendError: the scheduler cannot be reached (or was lost meanwhile).
        """
        async with _client.connect(self._address, self._dask) as client:
            try:
                await (
                    _client.distributed().Event(cancel_event_name(self.run_id), client=client).set()
                )
                future = await self._future(client)
                if future is None:
                    self._finish(self._not_known())
                    return
                states = await client.scheduler.get_task_status(keys=[self.run_id])
                if states.get(self.run_id) in ("processing", "memory", "erred"):
                    # On a worker: the task sees the event within 0.1 s and stops its work.
                    with anyio.move_on_after(self._dask.cancel_grace + _CANCEL_MARGIN):
                        await self._settle(client, future, block=True)
                if self._result is None:  # never reached a worker, or its worker is stuck
                    await client.cancel([future], force=True)
                    await client.unpublish_dataset(self.run_id)
                    self._finish(self._unknown("cancelled"))
            except (OSError, TimeoutError) as exc:  # the connection broke (CommClosedError)
                raise BackendError(f"lost the Dask scheduler at {self._address}: {exc}") from exc

    async def forget(self) -> None:
        """Release the run on the scheduler: its outcome is no longer kept there.

        A run still going on is not stopped by this alone (cancel it first); once
        released, the scheduler stops its task and other clients find it LOST.
        """
        if self._gone_elsewhere() is not None:
            return
        async with _client.connect(self._address, self._dask) as client:
            if await self._future(client) is not None:
                await client.unpublish_dataset(self.run_id)
            await _client.distributed().Event(cancel_event_name(self.run_id), client=client).clear()

    async def logs(
        self, stream: Stream = "stdout", *, follow: bool = False
    ) -> AsyncGenerator[str, None]:
        """Lines of the run's stdout or stderr file in its run folder (written by the
        worker as the run goes on); ``follow`` streams them until the run has ended."""
        check_stream(stream)
        async for line in tail_lines(
            self._dir / stream, follow=follow, wait_more=lambda: self._wait_or_end(0.25)
        ):
            yield line

    # -- records -----------------------------------------------------------------------

    def _record_data(self) -> dict[str, Any]:
        return {
            "address": self._address,
            "embedded_pid": self._embedded_pid,
            "run_dir": str(self._dir),
            "cwd": str(self._cwd),
            "submitted_at": self._submitted_at,
            "timeout": self._timeout,
        }

    @classmethod
    def _from_record(
        cls, run_id: str, job: Job, config: BackendConfig, data: dict[str, Any]
    ) -> DaskRunHandle:
        if not isinstance(config, DaskConfig):
            raise TypeError(f"expected a DaskConfig, got {type(config).__name__}")
        pid = data.get("embedded_pid")
        return cls(
            run_id=run_id,
            job=job,
            config=config,
            address=str(data["address"]),
            embedded_pid=int(pid) if pid is not None else None,
            run_dir=Path(data["run_dir"]),
            cwd=Path(data["cwd"]),
            submitted_at=float(data["submitted_at"]),
            timeout=float(data["timeout"]),
        )


def read_started(run_dir: Path) -> dict[str, Any] | None:
    """What the task wrote when it started the run (its subprocess's pid), if anything."""
    try:
        data = json.loads((run_dir / STARTED_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
