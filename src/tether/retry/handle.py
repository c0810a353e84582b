"""``RetryRunHandle``: one handle for every attempt of a retried run.

Its ``run_id`` and folder stay the same across attempts; ``attempts`` lists them
(run id, state, reason of each) and ``current`` is the inner handle of the one
going on (or the last). Any handle of the run, in any process, moves it on:
:mod:`tether.retry._state` describes the shared state and its lock.

The handle's own life (``state``): PENDING until an attempt starts; RUNNING from
then on, through every back-off between attempts (a run never goes back to
PENDING); terminal once an attempt's ending is final: it succeeded, it was
cancelled, the policy does not retry that ending, or the retries are used up.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import anyio

from .._shield import shielded_method
from ..backend import Backend
from ..config import BackendConfig
from ..errors import TetherError
from ..handle import RunHandle, Stream, check_stream
from ..job import Job
from ..result import RunResult, RunState
from ._state import Attempt, RetryState, locked, read_state, write_state
from .policy import RetryPolicy

if TYPE_CHECKING:
    from .backend import RetryConfig

#: A handle loaded without the job's secret values cannot submit an attempt; it
#: leaves a due attempt this long (seconds) to a handle that has them, then gives up.
SECRETS_GRACE = 30.0

#: Called (synchronously, must not raise) when an attempt is submitted or ends.
AttemptListener = Callable[["RetryRunHandle"], None]


def needs_secrets(job: Job, config: BackendConfig) -> bool:
    """Whether submitting ``job`` needs secret values that saved records never hold."""
    text = json.dumps([job.to_record(), config.to_record()], default=str)
    return '"secret_env"' in text or '"secret_env_vars"' in text


class RetryRunHandle(RunHandle):
    """The run of a job under a retry policy: every attempt, behind one handle."""

    backend_type: ClassVar[str] = "retry"
    #: wait() moves the run on by itself, so it reports RUNNING as attempts start.
    _wait_reports_running: ClassVar[bool] = True

    def __init__(
        self,
        *,
        run_id: str,
        job: Job,
        config: RetryConfig,
        folder: Path,
        shared: RetryState,
        policy: RetryPolicy,
        needs_secrets: bool,
        inner: Backend[Any] | None = None,
        secretless: bool = False,
    ) -> None:
        super().__init__(run_id=run_id, job=job, config=config, run_dir=folder)
        self._retry = config
        self._folder = folder
        self._shared = shared
        self._policy = policy
        self._needs_secrets = needs_secrets
        #: True when the job's or config's secret values are unknown here (reloaded).
        self._secretless = secretless
        self._backend = inner
        self._inners: dict[tuple[int, str | None], RunHandle] = {}
        self._listeners: list[AttemptListener] = []

    # -- what users read ----------------------------------------------------------------

    @property
    def policy(self) -> RetryPolicy:
        """The policy this run is retried under."""
        return self._policy

    @property
    def attempts(self) -> list[Attempt]:
        """Every attempt so far (the last may be planned: due after its back-off)."""
        return [attempt.model_copy() for attempt in self._shared.attempts]

    @property
    def attempt(self) -> int:
        """The number of the current (or last) attempt: 1, then 2 for the first retry..."""
        return self._shared.attempts[-1].number

    @property
    def current(self) -> RunHandle | None:
        """The inner handle of the current attempt (or of the last one submitted)."""
        submitted = self._last_submitted()
        return None if submitted is None else self._inner_for(submitted)

    def on_attempt(self, listener: AttemptListener) -> None:
        """Call ``listener(handle)`` whenever an attempt is submitted or ends.

        The pipeline runner journals the handle's record this way, so a resumed
        pipeline carries on with the same attempt. The listener must not raise or block.
        """
        self._listeners.append(listener)

    # -- attempts -------------------------------------------------------------------------

    def _last_submitted(self) -> Attempt | None:
        for attempt in reversed(self._shared.attempts):
            if attempt.record is not None:
                return attempt
        return None

    def _inner_for(self, attempt: Attempt) -> RunHandle:
        """The inner handle of a submitted attempt (rebuilt from its record once)."""
        from ..registry import handle_from_record

        assert attempt.record is not None
        key = (attempt.number, attempt.run_id)
        if key not in self._inners:
            self._inners[key] = handle_from_record(attempt.record)
        return self._inners[key]

    def _inner_backend(self) -> Backend[Any]:
        if self._backend is None:
            self._backend = self._retry.backend.create()
        return self._backend

    def _adopt(self, job: Job, backend: Backend[Any]) -> None:
        """Use ``job`` (with its secret values) and ``backend`` for attempts from now on."""
        self._job = job
        self._backend = backend
        self._secretless = False

    def _fresh(self) -> RetryState:
        """The folder's state when it knows more than this handle, else this handle's."""
        disk = read_state(self._folder, self.run_id)
        if disk is not None and disk.knows_more_than(self._shared):
            return disk
        return self._shared.model_copy(deep=True)

    def _foreign(self) -> str | None:
        """Why the folder is not this run's (a record names it, it may be anyone's)."""
        if self._folder.is_symlink() or (self._folder.exists() and not self._folder.is_dir()):
            return f"retry folder '{self._folder}' is not a folder of this run; not touching it"
        state_file = self._folder / "retry.json"
        if state_file.exists() and read_state(self._folder, self.run_id) is None:
            return f"retry folder '{self._folder}' holds another run's state; not touching it"
        return None

    async def _submit(self, attempt: Attempt) -> RunHandle:
        """Start ``attempt`` on the inner backend (or find it, if a crash hid it)."""
        backend = self._inner_backend()
        if attempt.run_id is not None and "find" in backend.capabilities:
            found = await backend.find(self._job, attempt.run_id)
            if found is not None:
                return found
            return await backend.submit(self._job, run_id=attempt.run_id)  # type: ignore[call-arg]
        return await backend.submit(self._job)

    def _plan_next(self, shared: RetryState, ended: Attempt) -> None:
        number = ended.number + 1
        finds = "find" in self._inner_backend().capabilities
        shared.attempts.append(
            Attempt(
                number=number,
                run_id=f"{self.run_id}-{number}" if finds else None,
                not_before=time.time() + self._policy.delay(ended.number),
            )
        )

    def _end_attempt(self, shared: RetryState, attempt: Attempt, result: RunResult) -> bool:
        """Record how ``attempt`` ended; plan the next one. True when the run is over."""
        attempt.state = result.state
        attempt.exit_code = result.exit_code
        attempt.reason = None if result.ok else (result.error or result.state.value)
        attempt.ended_at = time.time()
        if (
            shared.cancelled
            or result.ok
            or attempt.number > self._policy.retries
            or not self._policy.should_retry(result)
        ):
            shared.done = True
            return True
        self._plan_next(shared, attempt)
        return False

    def _final(self, result: RunResult) -> RunResult:
        """The run's result: the last attempt's, under this run's id."""
        update: dict[str, Any] = {"run_id": self.run_id}
        count = len(self._shared.attempts)
        if not result.ok and count > 1:
            update["error"] = f"{result.error or result.state.value} (after {count} attempts)"
        return result.model_copy(update=update)

    async def _outcome(self, attempt: Attempt) -> RunResult:
        """The result of an ended attempt (its inner handle's, with a Call's value)."""
        if attempt.record is None:
            return RunResult(run_id=self.run_id, state=attempt.state, error=attempt.reason)
        inner = self._inner_for(attempt)
        try:
            await inner.refresh()
        except TetherError as exc:
            return inner._lost(f"attempt {attempt.number} cannot be re-attached: {exc}")
        if inner.last_result is None:
            return RunResult(run_id=inner.run_id, state=attempt.state, error=attempt.reason)
        return inner.last_result

    async def _advance(self, *, raise_submit: bool = False) -> None:
        """Move the run on by one step, under the shared lock: see the module docstring."""
        if self._result is not None:
            return
        foreign = self._foreign()
        if foreign is not None:
            self._finish(self._lost(foreign))
            return
        changed = False
        final: RunResult | None = None
        with anyio.CancelScope(shield=True):  # a submitted attempt must be recorded
            async with locked(self._folder):
                shared = self._fresh()
                current = shared.attempts[-1]
                now = time.time()
                if shared.done:
                    final = await self._outcome(current)
                elif current.record is None:
                    if shared.cancelled:
                        current.state, current.reason = (
                            RunState.CANCELLED,
                            "cancelled before it started",
                        )
                        shared.done = changed = True
                        final = await self._outcome(current)
                    elif now >= (current.not_before or 0.0):
                        final, changed = await self._start(shared, current, now, raise_submit)
                else:
                    inner = self._inner_for(current)
                    try:
                        state = await inner.refresh()
                    except TetherError as exc:
                        inner._finish(inner._lost(f"attempt {current.number}: {exc}"))
                        state = RunState.LOST
                    if state.is_terminal:
                        assert inner.last_result is not None
                        if self._end_attempt(shared, current, inner.last_result):
                            final = inner.last_result
                        changed = True
                    elif state is not current.state:
                        current.state, changed = state, True
                if changed:
                    write_state(self._folder, shared)
                self._shared = shared
        if changed:
            for listener in tuple(self._listeners):
                listener(self)
        if final is not None:
            self._finish(self._final(final))
            return
        seen = self._shared.attempts[-1].state
        if seen in (RunState.PENDING, RunState.RUNNING) and self._state.can_become(seen):
            self._set_state(seen)

    async def _start(
        self, shared: RetryState, attempt: Attempt, now: float, raise_submit: bool
    ) -> tuple[RunResult | None, bool]:
        """Submit a due attempt; (the final result if that ended the run, changed)."""
        if self._secretless:
            if now < (attempt.not_before or 0.0) + SECRETS_GRACE:
                return None, False  # a handle with the secret values may submit it
            why = (
                f"attempt {attempt.number} was not submitted: this handle was loaded from a "
                "record without the job's secret values; keep the submitting process alive "
                "or load the handle where RetryingBackend.find(job, run_id) can give them"
            )
            result = RunResult(run_id=self.run_id, state=RunState.FAILED, error=why)
            self._end_attempt(shared, attempt, result)
            shared.done = True
            return result, True
        try:
            inner = await self._submit(attempt)
        except TetherError as exc:
            if raise_submit:
                raise
            result = RunResult(run_id=self.run_id, state=RunState.FAILED, error=str(exc))
            return (result if self._end_attempt(shared, attempt, result) else None), True
        self._inners[(attempt.number, inner.run_id)] = inner
        attempt.run_id = inner.run_id
        attempt.record = inner.to_record()
        attempt.submitted_at = now
        attempt.state = inner.state
        return None, True

    # -- the contract ---------------------------------------------------------------------

    async def refresh(self) -> RunState:
        """Move the run on (record an ended attempt, submit a due one); return its state."""
        await self._advance()
        return self._state

    async def _wait_done(self) -> RunResult:
        while True:
            await self._advance()
            if self._result is not None:
                return self._result
            current = self._shared.attempts[-1]
            if current.record is not None and not current.state.is_terminal:
                with contextlib.suppress(TetherError):  # the next step records it LOST
                    await self._inner_for(current).wait()
            else:  # a back-off: sleep in short steps, to see a cancel made elsewhere
                due = (current.not_before or 0.0) - time.time()
                await anyio.sleep(min(max(due, 0.02), 0.5))

    @shielded_method
    async def cancel(self) -> None:
        """Cancel the current attempt and every further one; idempotent and shielded."""
        with anyio.CancelScope(shield=True):
            if self._result is not None:
                return
            async with locked(self._folder):
                shared = self._fresh()
                if not shared.done and not shared.cancelled:
                    shared.cancelled = True  # no attempt is submitted after this
                    write_state(self._folder, shared)
                self._shared = shared
            current = self._shared.attempts[-1]
            if current.record is not None and not self._shared.done:
                await self._inner_for(current).cancel()
            await self._advance()

    async def logs(
        self, stream: Stream = "stdout", *, follow: bool = False
    ) -> AsyncGenerator[str, None]:
        """The current (or last) attempt's lines; ``follow`` goes on into later attempts."""
        check_stream(stream)
        streamed = 0  # the number of the last attempt whose lines were given
        while True:
            submitted = self._last_submitted()
            if submitted is not None and submitted.number > streamed:
                async for line in self._inner_for(submitted).logs(stream, follow=follow):
                    yield line
                streamed = submitted.number
            if not follow:
                return
            await self._advance()
            latest = self._last_submitted()
            if self._result is not None and (latest is None or latest.number <= streamed):
                return
            if latest is None or latest.number <= streamed:
                await anyio.sleep(0.2)

    # -- records ----------------------------------------------------------------------------

    def _record_data(self) -> dict[str, Any]:
        return {
            "folder": str(self._folder),
            "policy": self._policy.model_dump(mode="json"),
            "shared": self._shared.model_dump(mode="json"),
            "needs_secrets": self._needs_secrets,
        }

    @classmethod
    def _from_record(
        cls, run_id: str, job: Job, config: BackendConfig, data: dict[str, Any]
    ) -> RetryRunHandle:
        from .backend import RetryConfig

        if not isinstance(config, RetryConfig):
            raise TypeError(f"expected a RetryConfig, got {type(config).__name__}")
        shared = RetryState.model_validate(data["shared"])
        if shared.run_id != run_id:
            raise ValueError(f"the attempts are run {shared.run_id!r}'s, not {run_id!r}'s")
        needs = bool(data.get("needs_secrets", False))
        return cls(
            run_id=run_id,
            job=job,
            config=config,
            folder=Path(data["folder"]),
            shared=shared,
            policy=RetryPolicy.model_validate(data["policy"]),
            needs_secrets=needs,
            secretless=needs,
        )
