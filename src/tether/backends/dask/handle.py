"""``DaskRunHandle``: one run on a Dask scheduler, re-attached by its run id.

The scheduler holds the run as a published dataset named by the run id (the
task's key too); any client of the scheduler gets the run's future from it. The
task's return value is the run's outcome (see ``_task``). A run the scheduler no
longer knows (it restarted, the run was forgotten) is LOST, with the reason;
one cancelled by tether (``stop.json`` in the run folder) stays CANCELLED.

States: PENDING while the scheduler has the task waiting (for a worker, for
resources), RUNNING while a worker processes it, then the terminal state its
outcome says.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any, ClassVar

import anyio

from ..._files import write_json_once
from ..._outcome import failure_reason
from ..._runs import collect_outputs, tail_lines
from ..._shield import shielded_method
from ...call import Call, decode_outcome
from ...config import BackendConfig
from ...handle import RunHandle, Stream, check_stream
from ...job import Job
from ...result import RunResult, RunState, utc_time
from . import _client
from ._task import STARTED_FILE, cancel_event_name
from .config import DaskConfig

#: Seconds cancel() waits beyond the grace for the task to report its end.
_CANCEL_MARGIN = 10.0


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

    def _result_from(self, data: dict[str, Any]) -> RunResult:
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
        called: dict[str, Any] = {}
        if isinstance(self._job, Call) and reason == "exited" and data.get("outcome"):
            # The outcome came through the scheduler, which every client trusts.
            called = decode_outcome(data["outcome"])
            called.pop("exit_code")
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
        async with _client.connect(self._address, self._dask) as client:
            future = await self._future(client)
            if future is None:
                self._finish(self._not_known())
            else:
                await self._settle(client, future, block=False)
        return self._state

    async def _wait_done(self) -> RunResult:
        if (why := self._gone_elsewhere()) is not None:
            return self._finish(self._unknown(why))
        async with _client.connect(self._address, self._dask) as client:
            future = await self._future(client)
            if future is None:
                self._finish(self._not_known())
            else:
                await self._settle(client, future, block=True)
        assert self._result is not None
        return self._result

    async def _wait_or_end(self, seconds: float) -> bool:
        """Sleep up to ``seconds`` (less once the task wrote its end); True once terminal."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not (self._dir / "exit.json").exists():  # noqa: ASYNC110 (a file the worker writes)
            await anyio.sleep(0.05)
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
        late copy of the task (after a worker's death) never starts the work."""
        if (await self.refresh()).is_terminal:
            return
        write_json_once(self._dir / "stop.json", {"reason": "cancelled", "at": time.time()})
        async with _client.connect(self._address, self._dask) as client:
            await _client.distributed().Event(cancel_event_name(self.run_id), client=client).set()
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
