"""The run handle contract: one stateful object per run, savable and re-loadable."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Callable, Generator
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import anyio

from . import _html
from .config import BackendConfig
from .errors import (
    InvalidTransitionError,
    RecordError,
    RunFailedError,
    RunTimedOutError,
    WaitTimeout,
)
from .job import Job
from .records import write_record
from .result import RunResult, RunState, utc_time

Stream = Literal["stdout", "stderr"]


def check_stream(stream: str) -> None:
    """Refuse anything but the two streams ``logs()`` knows."""
    if stream not in ("stdout", "stderr"):
        raise ValueError(f"stream must be 'stdout' or 'stderr', not {stream!r}")


H = TypeVar("H", bound="RunHandle")

#: Called synchronously on each change of a handle's state: (handle, old, new); it must
#: not raise or block (it runs inside whichever backend call moved the state).
StateListener = Callable[["RunHandle", RunState, RunState], None]


class RunHandle(ABC):
    """The handle of one run: await it, poll it, cancel it, read its logs, save it.

    A handle holds the last state it observed (``state``); the async methods ask the
    backend for news. Several tasks of one event loop may use a handle at once
    (one waits while another refreshes or cancels).

    Saving writes a versioned JSON record; ``load_handle`` (or ``cls.load``) rebuilds
    an equivalent handle in any process, without the backend object that made it,
    to re-attach to the same run.
    """

    #: Registry name of the backend whose runs this class handles.
    backend_type: ClassVar[str]

    #: True when the handle's own ``wait()`` moves it PENDING → RUNNING as the run
    #: starts; watchers (``tether.watch``) then never refresh a pending handle of it.
    _wait_reports_running: ClassVar[bool] = False

    def __init__(
        self,
        *,
        run_id: str,
        job: Job,
        config: BackendConfig,
        state: RunState = RunState.PENDING,
        run_dir: Path | None = None,
    ) -> None:
        self._run_id = run_id
        self._run_dir = run_dir
        self._job = job
        self._config = config
        self._state = state
        self._result: RunResult | None = None
        # Watchers' subscriptions to state changes (see tether.watching); usually empty.
        self._state_listeners: list[StateListener] = []

    # -- plain attributes (sync: they touch nothing) --------------------------------

    @property
    def run_id(self) -> str:
        """The run's id, unique across backends and machines."""
        return self._run_id

    @property
    def run_dir(self) -> Path | None:
        """The run's folder (logs, outputs, records), if the backend keeps one."""
        return self._run_dir

    @property
    def job(self) -> Job:
        """The job this run executes (secret values are absent after a reload)."""
        return self._job

    @property
    def config(self) -> BackendConfig:
        """The backend settings the run was submitted with."""
        return self._config

    @property
    def state(self) -> RunState:
        """The last state observed; call ``refresh()`` for news."""
        return self._state

    @property
    def last_result(self) -> RunResult | None:
        """The terminal result once observed, else None."""
        return self._result

    def __repr__(self) -> str:
        return f"<{type(self).__name__} run_id={self._run_id!r} state={self._state.value}>"

    def _repr_html_(self) -> str:
        """Jupyter's rendering: the last observed state, and the result once terminal."""
        return _html.handle_html(self)

    def __await__(self) -> Generator[Any, None, RunResult]:
        """``await handle`` is ``await handle.wait()``."""
        return self.wait().__await__()

    # -- the state machine --------------------------------------------------------------

    def _set_state(self, new: RunState) -> None:
        """Move to ``new``; terminal states are final, RUNNING never goes back to PENDING."""
        if not self._state.can_become(new):
            raise InvalidTransitionError(self._run_id, self._state, new)
        old, self._state = self._state, new
        if old is not new:
            for listener in tuple(self._state_listeners):
                listener(self, old, new)

    def _lost(self, why: str, started: float | None = None) -> RunResult:
        """The result of a run that can no longer be found: LOST, with the reason."""
        return RunResult(
            run_id=self._run_id, state=RunState.LOST, started_at=utc_time(started), error=why
        )

    def _finish(self, result: RunResult) -> RunResult:
        """Record the terminal result (idempotent for the same terminal state)."""
        if self._result is not None:
            return self._result
        self._set_state(result.state)
        if result.run_dir is None and self._run_dir is not None:
            result = result.model_copy(update={"run_dir": self._run_dir})
        self._result = result
        return result

    # -- the contract -------------------------------------------------------------------

    @abstractmethod
    async def refresh(self) -> RunState:
        """Ask the backend for the run's current state, store it and return it.

        Never raises because the run is gone: a run that cannot be found is LOST.
        """

    @abstractmethod
    async def _wait_done(self) -> RunResult:
        """Block until the run is terminal and return its result (event-driven)."""

    @abstractmethod
    async def cancel(self) -> None:
        """End the run and everything it started; idempotent and shielded.

        A no-op on a terminal run. Returns once nothing of the run is left running.
        """

    @abstractmethod
    def logs(self, stream: Stream = "stdout", *, follow: bool = False) -> AsyncGenerator[str, None]:
        """Yield the run's output lines (without newlines).

        With ``follow=True`` keep yielding new lines while the run goes on and stop
        when it has ended and everything was read.
        """

    @abstractmethod
    def _record_data(self) -> dict[str, Any]:
        """The backend's own part of the saved record (ids, paths), JSON-ready."""

    @classmethod
    @abstractmethod
    def _from_record(
        cls: type[H], run_id: str, job: Job, config: BackendConfig, data: dict[str, Any]
    ) -> H:
        """Rebuild a handle from a record's parts; no I/O, no validation of liveness."""

    # -- behaviour shared by every backend ---------------------------------------------

    async def wait(self, timeout: float | None = None) -> RunResult:
        """Wait until the run is terminal and return its result.

        With ``timeout`` (seconds), raise :class:`WaitTimeout` (a ``TimeoutError``)
        when it runs out; the run itself goes on. Cancelling the waiting task does
        not cancel the run either.
        """
        if self._result is not None:
            return self._result
        if timeout is None:
            return await self._wait_done()
        result: RunResult | None = None
        with anyio.move_on_after(timeout):
            result = await self._wait_done()
        if result is None:
            await self.refresh()  # the message names the state the run is in now
            raise WaitTimeout(
                f"Run {self._run_id} still {self._state.value} after {timeout:g}s; "
                "it keeps going (wait again, or cancel it)."
            )
        return result

    async def is_complete(self) -> bool:
        """True once the run is terminal."""
        return (await self.refresh()).is_terminal

    async def result(self) -> RunResult:
        """Wait for the run; return its result, or raise why it did not succeed.

        A ``Call`` whose function raised re-raises that exception (its type kept,
        chained to the traceback from where it ran); every other failure raises
        :class:`RunFailedError` (:class:`RunTimedOutError`, also a ``TimeoutError``,
        for a run that timed out).
        """
        result = await self.wait()
        if not result.ok:
            if result.exception is not None:
                raise result.exception
            if result.state is RunState.TIMED_OUT:
                raise RunTimedOutError(result)
            raise RunFailedError(result)
        return result

    def to_record(self) -> dict[str, Any]:
        """The JSON-ready record ``save`` writes (no secrets, no pickles)."""
        return {
            "backend": self.backend_type,
            "run_id": self._run_id,
            "job": self._job.to_record(),
            "config": self._config.to_record(),
            "data": self._record_data(),
        }

    async def save(self, path: str | Path) -> Path:
        """Write the handle's record to ``path`` atomically (mode 0600); return the path."""
        target = Path(path)
        try:
            write_record(target, self.to_record())
        except OSError as exc:
            raise RecordError(
                f"Cannot save handle to '{target}': {exc.strerror or exc}; "
                "choose a writable location."
            ) from exc
        return target

    @classmethod
    async def load(cls: type[H], path: str | Path) -> H:
        """Load a saved handle; the record must belong to this class's backend."""
        from .registry import load_handle

        handle = await load_handle(path)
        if not isinstance(handle, cls):
            raise RecordError(
                f"Handle file '{path}' is a {handle.backend_type!r} run, not {cls.__name__}."
            )
        return handle
