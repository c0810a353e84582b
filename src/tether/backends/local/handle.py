"""LocalRunHandle: the handle of one local run, usable from any process."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any, ClassVar

import anyio

from ... import _proc
from ..._exitwait import wait_exit
from ..._outcome import failure_reason, supervised_result
from ..._runs import (
    tail_lines,
)
from ..._shield import shielded_method
from ...config import BackendConfig
from ...handle import RunHandle, Stream, check_stream
from ...job import Job
from ...result import RunResult, RunState
from . import _slots
from ._common import (
    _boot_id,
    _children,
    _reap,
    _write_outcome,
)
from .config import LocalConfig


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
        slots: bool = False,
    ) -> None:
        # PENDING: waiting for resource slots (the admission step runs, no slots.json
        #   yet); only runs whose job asks for CPUs, memory or GPUs are ever PENDING.
        # RUNNING: the supervisor runs the command (or is up, about to).
        # Then the terminal state exit.json records, or LOST.
        pending = slots and _slots.read_grant(run_dir) is None
        super().__init__(
            run_id=run_id,
            job=job,
            config=config,
            state=RunState.PENDING if pending else RunState.RUNNING,
            run_dir=run_dir,
        )
        self._slots = slots
        self._local = config
        self._dir = run_dir
        self._exit_file = f"{run_dir}/exit.json"  # read on every refresh: joined once
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

    @property
    def slots(self) -> dict[str, Any] | None:
        """The resource slots the run holds once admitted (``cpus`` and ``gpus`` ids,
        ``memory`` bytes, how the limit is enforced), read from its ``slots.json``;
        None while it waits, or when its job asked for none."""
        return _slots.read_grant(self._dir) if self._slots else None

    # -- observing --------------------------------------------------------------

    def _read_exit(self) -> dict[str, Any] | None:
        try:  # os-level: one small file, read on every refresh
            fd = os.open(self._exit_file, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:  # not there yet (or no folder): the caller looks further
            return None
        try:
            data = json.loads(os.read(fd, 1 << 16))
        except (OSError, ValueError):
            return None
        finally:
            os.close(fd)
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
            if self._slots and (why := _slots.memory_failure(self.slots, stderr)) is not None:
                error = f"{why}: {error}"
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
        elif self._state is RunState.PENDING and self.slots is not None:
            self._set_state(RunState.RUNNING)  # admitted: its slots are held
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
        _reap(self._pid)

    async def _wait_done(self) -> RunResult:
        while self._result is None:
            # A pidfd while the process has some to spare, else a shared inotify watch.
            await wait_exit(self._open_pidfd, self._alive, self._dir)
            self._reap()
            # The supervisor is gone (or exit.json is there): it says how the run
            # ended, or the run is LOST; after a spurious wake-up, wait again.
            await self.refresh()
        return self._result

    async def _wait_or_end(self, seconds: float) -> bool:
        """Sleep up to ``seconds``, waking early if the run ends; True once it has."""
        if (await self.refresh()).is_terminal:
            return True
        await wait_exit(self._open_pidfd, self._alive, self._dir, timeout=seconds)
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
            "slots": self._slots,
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
            slots=bool(data.get("slots", False)),
        )
