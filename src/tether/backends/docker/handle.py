"""``DockerRunHandle``: one container run, re-attached by container id from any process."""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import anyio

from ... import _proc
from ..._files import write_atomic, write_json_once
from ..._runs import collect_outputs, last_line, tail_lines
from ..._shield import shielded_method
from ...config import BackendConfig
from ...errors import BackendError
from ...handle import RunHandle, Stream, check_stream
from ...job import Job
from ...result import RunResult, RunState, utc_time
from . import _engine as eng
from .config import LABEL_RUN_DIR, LABEL_RUN_ID, DockerConfig

if TYPE_CHECKING:
    import aiodocker

#: Seconds a container gets to be reported stopped after the engine's stop returned.
_STOP_WAIT = 30.0


class DockerRunHandle(RunHandle):
    """Handle of one container run; re-attaches by container id from any process."""

    backend_type: ClassVar[str] = "docker"

    def __init__(
        self,
        *,
        run_id: str,
        job: Job,
        config: DockerConfig,
        run_dir: Path,
        workdir: Path | None,
        container_id: str,
        image: str,
        started_at: float,
        timeout: float,
        watchdog: tuple[int, int | None] | None = None,
    ) -> None:
        super().__init__(
            run_id=run_id, job=job, config=config, state=RunState.RUNNING, run_dir=run_dir
        )
        self._docker = config
        self._dir = run_dir
        self._workdir = workdir
        self._container_id = container_id
        self._image = image
        self._started_at = started_at
        self._timeout = timeout
        self._watchdog = watchdog

    @property
    def container_id(self) -> str:
        """The engine's id of the run's container."""
        return self._container_id

    @property
    def image(self) -> str:
        """The image the container runs (for a dockerfile: the tag tether built)."""
        return self._image

    @property
    def _deadline(self) -> float:
        return self._started_at + self._timeout

    # -- proving the container is the run's own -----------------------------------------

    def _not_ours(self, info: dict[str, Any]) -> str | None:
        """Why the container ``info`` describes is not this run's, or None if it is.

        A record can come from anywhere: a container is this run's only when it
        carries the run's id and folder in the labels tether set at creation.
        """
        labels = (info.get("Config") or {}).get("Labels") or {}
        if labels.get(LABEL_RUN_ID) == self.run_id and labels.get(LABEL_RUN_DIR) == str(self._dir):
            return None
        return (
            f"container {self._container_id[:12]} is not this run's (label "
            f"{LABEL_RUN_ID}={labels.get(LABEL_RUN_ID)!r}, expected {self.run_id!r}); "
            "not touching it"
        )

    async def _own(self, client: aiodocker.Docker) -> dict[str, Any] | None:
        """The container's inspect data once proven the run's own; None when it is gone.

        A container that is not the run's makes the run LOST (the reason says why)
        and is never stopped, removed or read: :class:`_NotOurs` is raised.
        """
        info = await eng.inspect(client, self._container_id)
        if info is not None and (why := self._not_ours(info)) is not None:
            self._finish(self._lost(why, self._started_at))
            raise _NotOurs(why)
        return info

    def _watchdog_gone(self) -> bool:
        """Whether the run's watchdog is proven gone (a record without one: unknown, no)."""
        if self._watchdog is None:
            return False
        return not _proc.is_running(*self._watchdog)

    async def discard_if_unstarted(self) -> bool:
        """Discard the run if its container never started (its submitter died before it
        could): the record goes first, then the container. True if it was discarded."""
        async with eng.engine(self._docker.docker_host) as client:
            try:
                info = await self._own(client)
            except _NotOurs:
                return False
            if ((info or {}).get("State") or {}).get("Status") != "created":
                return False
            with contextlib.suppress(FileNotFoundError):
                (self._dir / "handle.json").unlink()
            await eng.remove(client, self._container_id, force=True)
        return True

    @staticmethod
    async def discard_unrecorded(run_dir: Path, docker_host: str | None) -> None:
        """Remove the never-started container of a run folder that has no record."""
        name = container_name(run_dir)
        async with eng.engine(docker_host) as client:
            info = await eng.inspect(client, name)
            labels = ((info or {}).get("Config") or {}).get("Labels") or {}
            status = ((info or {}).get("State") or {}).get("Status")
            if (
                info is not None
                and labels.get(LABEL_RUN_ID) == run_dir.name
                and labels.get(LABEL_RUN_DIR) == str(run_dir)
                and status == "created"
            ):
                await eng.remove(client, str(info["Id"]), force=True)

    # -- recording the end -----------------------------------------------------------

    def _read_json(self, name: str) -> dict[str, Any] | None:
        try:
            data = json.loads((self._dir / name).read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    async def _record_end(self, client: aiodocker.Docker, info: dict[str, Any]) -> None:
        """Copy the logs into the run folder, record exit.json, then remove the container."""
        if self._read_json("exit.json") is None:
            for stream in ("stdout", "stderr"):
                text = await eng.read_logs(client, self._container_id, stream)
                if text is not None:
                    write_atomic(self._dir / stream, text.encode())
            state = info.get("State") or {}
            stop = self._read_json("stop.json") or {}
            write_json_once(
                self._dir / "exit.json",
                {
                    "reason": stop.get("reason", "exited"),
                    "exit_code": state.get("ExitCode"),
                    "oom_killed": bool(state.get("OOMKilled")),
                    "started": eng.parse_time(state.get("StartedAt")) or self._started_at,
                    "ended": eng.parse_time(state.get("FinishedAt")) or time.time(),
                    "error": state.get("Error") or None,
                },
            )
        if self._docker.remove_container:
            await eng.remove(client, self._container_id)

    async def _record_start_failure(self, client: aiodocker.Docker, reason: str) -> None:
        info = await eng.inspect(client, self._container_id) or {}
        code = (info.get("State") or {}).get("ExitCode") or 127
        for stream in ("stdout", "stderr"):
            write_atomic(self._dir / stream, b"")
        write_json_once(
            self._dir / "exit.json",
            {
                "reason": "start_failed",
                "exit_code": code,
                "oom_killed": False,
                "started": self._started_at,
                "ended": time.time(),
                "error": f"the container did not start: {reason}",
            },
        )
        await eng.remove(client, self._container_id, force=True)

    async def _stop(self, client: aiodocker.Docker, reason: str) -> None:
        """Stop the container (TERM, grace, KILL) for ``reason`` and record its end."""
        write_json_once(self._dir / "stop.json", {"reason": reason, "at": time.time()})
        await eng.stop(client, self._container_id, self._docker.cancel_grace)
        # Terminal only once nothing of the run runs: the engine says it stopped.
        with anyio.move_on_after(_STOP_WAIT):
            await eng.wait_exit(client, self._container_id)
        info = await eng.inspect(client, self._container_id)
        status = ((info or {}).get("State") or {}).get("Status")
        if info is not None and status not in ("exited", "dead", "removing"):
            raise BackendError(
                f"container {self._container_id[:12]} is still {status} after being stopped; "
                "cancel again, or stop it with docker kill"
            )
        if info is not None:
            await self._record_end(client, info)

    def _result_from_exit(self, data: dict[str, Any]) -> RunResult:
        reason, code = data.get("reason"), data.get("exit_code")
        stdout, stderr = self._dir / "stdout", self._dir / "stderr"
        error: str | None = None
        if reason == "timeout":
            state = RunState.TIMED_OUT
            error = f"timed out after {self._timeout:g}s (container stopped)"
        elif reason == "cancelled":
            state = RunState.CANCELLED
            error = "cancelled"
        elif reason == "exited" and code == 0:
            state = RunState.SUCCEEDED
        else:
            state = RunState.FAILED
            error = data.get("error") or self._failure_reason(data, stderr)
        outputs: list[Path] = []
        if self._job.outputs and self._dir.is_dir():
            outputs = collect_outputs(self._job.outputs, self._workdir or self._dir, self._dir)
        return RunResult(
            run_id=self.run_id,
            state=state,
            exit_code=code if isinstance(code, int) else None,
            started_at=utc_time(data.get("started", self._started_at)),
            ended_at=utc_time(data.get("ended")),
            stdout=stdout,
            stderr=stderr,
            outputs=outputs,
            error=error,
        )

    def _failure_reason(self, data: dict[str, Any], stderr: Path) -> str:
        code = data.get("exit_code")
        if data.get("oom_killed"):
            limit = self._job.resources.memory or self._docker.memory
            text = f"killed: out of memory (limit {limit})"
        elif code == 137 and (limit := self._job.resources.memory or self._docker.memory):
            # The engine's OOMKilled flag can miss a kill on a busy machine (cgroup v2).
            text = (
                f"exit code 137 (killed by SIGKILL: likely out of memory (limit {limit}), "
                "though the engine did not say)"
            )
        elif code == 137:
            text = "exit code 137 (killed by SIGKILL)"
        elif code == 127:
            text = "exit code 127 (command not found?)"
        else:
            text = f"exit code {code}"
        tail = last_line(stderr)
        return f"{text}: {tail}" if tail else text

    # -- observing ---------------------------------------------------------------------

    async def refresh(self) -> RunState:
        """Read the recorded result, or ask the engine (recording the end if it ended).

        Past the deadline a running container is stopped here: TIMED_OUT.
        """
        if self._result is not None:
            return self._state
        data = self._read_json("exit.json")
        if data is None and not self._dir.is_dir():
            self._finish(self._lost(f"run folder {self._dir} no longer exists", self._started_at))
            return self._state
        if data is None:
            try:
                status = await self._look()
            except _NotOurs:
                return self._state
            if self._result is not None:
                return self._state
            data = self._read_json("exit.json")  # ours, or another process's
            if data is None and status is None:
                self._finish(
                    self._lost(
                        f"container {self._container_id[:12]} no longer exists and its "
                        "result was never recorded",
                        self._started_at,
                    )
                )
        if data is not None:
            self._finish(self._result_from_exit(data))
        return self._state

    async def _look(self) -> str | None:
        """Ask the engine about the (proven) container and act on what it says: record
        an end, stop it past its deadline, discard it if it can never start. Returns
        the container's status, None when it is gone."""
        async with eng.engine(self._docker.docker_host) as client:
            info = await self._own(client)
            status = ((info or {}).get("State") or {}).get("Status")
            if status in ("exited", "dead"):
                await self._record_end(client, info or {})
            elif status == "created" and self._watchdog_gone():
                # Its submitter died before starting it, and so did its watchdog.
                with contextlib.suppress(FileNotFoundError):
                    (self._dir / "handle.json").unlink()
                await eng.remove(client, self._container_id, force=True)
                self._finish(
                    self._lost(
                        "never started: its submitter stopped before starting the container",
                        self._started_at,
                    )
                )
            elif status is not None and time.time() >= self._deadline:
                await self._stop(client, "timeout")
            elif status == "created":
                self._set_state(RunState.PENDING)
        return status

    async def _wait_done(self) -> RunResult:
        if (await self.refresh()).is_terminal:
            assert self._result is not None
            return self._result
        while self._result is None:
            if (await self.refresh()).is_terminal:
                break
            remaining = self._deadline - time.time()
            if self._state is RunState.PENDING:
                # Created but not started: the engine's wait would return at once.
                await anyio.sleep(min(0.5, max(remaining, 0)))
                continue
            if remaining > 0:
                async with eng.engine(self._docker.docker_host) as client:
                    with anyio.move_on_after(remaining):
                        await eng.wait_exit(client, self._container_id)
            # Ended (refresh records it) or past the deadline (refresh stops it).
        assert self._result is not None
        await self._await_removed()
        return self._result

    async def _await_removed(self) -> None:
        """Return once the recorded run's container is gone (when it is to be removed).

        Recorded by another process (the watchdog) that may not have removed the
        container yet: waiters and cancel return once nothing of the run is left.
        """
        if self._result is None or self._result.state is RunState.LOST:
            return
        if not self._docker.remove_container:
            return
        async with eng.engine(self._docker.docker_host) as client:
            with contextlib.suppress(_NotOurs), anyio.move_on_after(_STOP_WAIT):
                while await self._own(client) is not None:
                    await eng.remove(client, self._container_id, force=True)
                    await anyio.sleep(0.05)  # another process's removal in progress

    # -- acting ------------------------------------------------------------------------

    @shielded_method
    async def cancel(self) -> None:
        """Stop the container (TERM, then KILL after ``cancel_grace``) and record it.

        Runs to its end whatever cancels the caller (asyncio's own cancels included).
        """
        if (await self.refresh()).is_terminal:
            return
        async with eng.engine(self._docker.docker_host) as client:
            await self._stop(client, "cancelled")
        await self.refresh()
        await self._await_removed()

    async def logs(
        self, stream: Stream = "stdout", *, follow: bool = False
    ) -> AsyncGenerator[str, None]:
        """The run's output lines: from the engine while it runs, from the run folder after.

        With ``follow`` the engine streams new lines until the container ends.
        """
        check_stream(stream)
        seen = 0
        if self._read_json("exit.json") is None and self._dir.is_dir():
            async with eng.engine(self._docker.docker_host) as client:
                try:
                    await self._own(client)
                except _NotOurs:
                    return
                if follow:
                    buffer = ""
                    async for chunk in eng.follow_logs(client, self._container_id, stream):
                        *lines, buffer = (buffer + chunk).split("\n")
                        for line in lines:
                            seen += 1
                            yield line
                    if buffer:
                        seen += 1
                        yield buffer
                else:
                    text = await eng.read_logs(client, self._container_id, stream)
                    if text is not None:
                        for line in _lines(text):
                            seen += 1
                            yield line
                        return
        # Recorded (now, or while the engine streamed): the run folder has it all.
        index = 0
        async for line in tail_lines(self._dir / stream):
            index += 1
            if index > seen:
                yield line

    # -- records -----------------------------------------------------------------------

    def _record_data(self) -> dict[str, Any]:
        return {
            "run_dir": str(self._dir),
            "workdir": None if self._workdir is None else str(self._workdir),
            "container_id": self._container_id,
            "image": self._image,
            "started_at": self._started_at,
            "timeout": self._timeout,
            "watchdog": None if self._watchdog is None else list(self._watchdog),
        }

    @classmethod
    def _from_record(
        cls, run_id: str, job: Job, config: BackendConfig, data: dict[str, Any]
    ) -> DockerRunHandle:
        if not isinstance(config, DockerConfig):
            raise TypeError(f"expected a DockerConfig, got {type(config).__name__}")
        workdir = data.get("workdir")
        return cls(
            run_id=run_id,
            job=job,
            config=config,
            run_dir=Path(data["run_dir"]),
            workdir=None if workdir is None else Path(workdir),
            container_id=str(data["container_id"]),
            image=str(data["image"]),
            started_at=float(data["started_at"]),
            timeout=float(data["timeout"]),
            watchdog=_watchdog_field(data.get("watchdog")),
        )


def _lines(text: str) -> list[str]:
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def container_name(run_dir: Path) -> str:
    """The run's container name: its run id, and a digest of its folder, so that runs
    of the same chosen id in two runs folders (two pipelines) never collide on the
    engine, whose names are global."""
    digest = hashlib.sha256(str(run_dir).encode()).hexdigest()[:8]
    return f"tether-{run_dir.name}-{digest}"


class _NotOurs(Exception):
    """The container a record names is not the run's own (the run is LOST already)."""


def _watchdog_field(value: Any) -> tuple[int, int | None] | None:
    """The recorded watchdog (pid, start ticks), or None for a record without one."""
    if isinstance(value, list) and len(value) == 2 and isinstance(value[0], int):
        ticks = value[1]
        return value[0], ticks if isinstance(ticks, int) else None
    return None
