"""tether-nohup: an example third-party tether backend, all in one module.

A ``nohup`` run is a command detached from Python the old Unix way: a small shell
wrapper, started in a session of its own, runs the command under coreutils
``timeout`` and, when it ends, writes ``<exit status> <end time>`` to ``exit`` in
the run's folder (to a temporary file first, then ``mv``: a reader never sees half
of it). Any process that loads the saved handle reads that file, or looks the
wrapper up in ``/proc`` (pid *and* start time, so a reused pid is not mistaken for
it), to learn how the run is doing.

A backend is three classes, and this one uses only tether's public API: the config
(pydantic; its ``type`` is the name registered under the ``tether.backends``
entry-point group in this package's ``pyproject.toml``; ``availability()``), the
backend (``submit``) and the handle (``refresh``, ``_wait_done``, ``cancel``,
``logs`` and its saved record). Nothing in tether changes. Needs Linux (``/proc``),
``/bin/sh`` and GNU coreutils.

The run folder::

    run.sh       the wrapper (no secrets: the environment is never written down)
    stdout       the command's standard output
    stderr       its standard error, and the wrapper's own complaints
    exit         "<exit status> <end time>", once the command has ended
    cancelled    "<time>", once someone cancelled the run
    handle.json  a saved handle: the run can be re-attached from its folder alone
    outputs/     the job's output files, when it worked in another folder
"""

from __future__ import annotations

import builtins
import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncGenerator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Literal

import anyio
from pydantic import ConfigDict, Field

from tether import (
    Availability,
    Backend,
    BackendConfig,
    BackendUnavailableError,
    ConfigError,
    Job,
    RecordError,
    RunHandle,
    RunResult,
    RunState,
    SubmitError,
)

Stream = Literal["stdout", "stderr"]

_CAPABILITIES = frozenset({"detached", "reattach", "cancel", "commands", "timeout"})
_POLL = 0.1  # seconds between two looks at a run (see NohupRunHandle._wait_done)
_OWN_FILES = frozenset(
    {"run.sh", "stdout", "stderr", "exit", "exit.tmp", "cancelled", "handle.json", "outputs"}
)

# Arguments: run folder, working folder, timeout, grace, then the command itself.
_WRAPPER = """\
# Written by tether-nohup: runs the job's command under coreutils timeout, then
# records "<exit status> <end time>" in ./exit (a temp file renamed into place).
run_dir=$1 workdir=$2 seconds=$3 grace=$4
shift 4
exec >"$run_dir/stdout" 2>"$run_dir/stderr"
cd "$workdir" && timeout -s TERM -k "$grace" "$seconds" "$@"
status=$?
echo "$status $(date +%s.%N)" >"$run_dir/exit.tmp" && mv -f "$run_dir/exit.tmp" "$run_dir/exit"
"""


def _default_runs_dir() -> Path:
    """``nohup-runs`` in tether's state folder ($TETHER_HOME, or ~/.local/state/tether)."""
    home = os.environ.get("TETHER_HOME")
    if home:
        return Path(home).expanduser() / "nohup-runs"
    state = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(state) / "tether" / "nohup-runs"


class NohupConfig(BackendConfig):
    """Run commands detached under ``/bin/sh`` and coreutils ``timeout``."""

    # Merged with BackendConfig's settings (strict, frozen); adds a whole example.
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "type": "nohup",
                    "runs_dir": "/scratch/me/nohup-runs",
                    "cancel_grace": 10.0,
                    "timeout": 7200,
                    "env_vars": {"OMP_NUM_THREADS": "4"},
                }
            ]
        }
    )

    type: Literal["nohup"] = Field(
        "nohup", description="Names this backend in config files.", examples=["nohup"]
    )
    runs_dir: Path | None = Field(
        None,
        description="Folder for run folders; default: nohup-runs in tether's state folder "
        "($TETHER_HOME, or ~/.local/state/tether).",
        examples=["/scratch/me/nohup-runs"],
    )
    cancel_grace: float = Field(
        5.0,
        gt=0,
        le=600,
        description="Seconds between TERM and KILL when a run is cancelled or times out.",
        examples=[5.0],
    )

    capabilities: ClassVar[frozenset[str]] = _CAPABILITIES

    @classmethod
    def availability(cls) -> Availability:
        """Usable where ``/bin/sh``, coreutils ``timeout`` and ``/proc`` exist.

        ``tether backends list`` shows the reason; ``await backend.check()`` asks it too.
        """
        if not os.access("/bin/sh", os.X_OK):
            return Availability(False, "the nohup backend needs /bin/sh")
        if shutil.which("timeout") is None:
            return Availability(False, "the nohup backend needs 'timeout' (GNU coreutils) on PATH")
        if not os.path.exists("/proc/self/stat"):
            return Availability(False, "the nohup backend needs Linux (/proc)")
        return Availability(True)

    def create(self) -> NohupBackend:
        """Return a :class:`NohupBackend` with these settings."""
        return NohupBackend(self)

    @classmethod
    def handle_class(cls) -> builtins.type[NohupRunHandle]:
        """Saved nohup runs load into :class:`NohupRunHandle`."""
        return NohupRunHandle


class NohupBackend(Backend[NohupConfig]):
    """Starts each job as a detached shell wrapper; see the module docstring."""

    capabilities: ClassVar[frozenset[str]] = _CAPABILITIES

    async def submit(self, job: Job) -> NohupRunHandle:
        """Start ``job`` detached in its own run folder and return its handle at once."""
        availability = NohupConfig.availability()  # quick: no thread hop needed
        if not availability:
            raise BackendUnavailableError(f"Backend 'nohup' cannot run here: {availability.reason}")
        config = self.config
        argv = _argv(job)
        timeout = float(config.timeout)
        if job.resources.walltime is not None:
            timeout = min(timeout, job.resources.walltime)
        _reap_children()
        run_id = _new_run_id(job.name)
        run_dir = (config.runs_dir or _default_runs_dir()).expanduser().absolute() / run_id
        try:
            run_dir.mkdir(mode=0o700, parents=True)
        except OSError as exc:
            raise SubmitError(
                f"Cannot create run folder '{run_dir}': {exc.strerror}; "
                "set runs_dir to a writable folder."
            ) from exc
        cwd = (job.workdir or config.working_dir or run_dir).expanduser().absolute()
        # Secrets are revealed into the child's environment only, never into a file.
        env = {
            **os.environ,
            **config.resolved_env(),
            **job.resolved_env(),
            "TETHER_RUN_ID": run_id,
            "TETHER_RUN_DIR": str(run_dir),
        }
        try:
            _copy_inputs(job.inputs, run_dir)
            (run_dir / "run.sh").write_text(_WRAPPER)
            args = [str(run_dir), str(cwd), repr(timeout), repr(config.cancel_grace), *argv]
            started = time.time()
            pid = _launch(run_dir / "run.sh", args, env)
        except BaseException as exc:
            shutil.rmtree(run_dir, ignore_errors=True)
            if isinstance(exc, OSError):
                raise SubmitError(f"Cannot start run of job {job.name!r}: {exc}") from exc
            raise
        handle = NohupRunHandle(
            run_id=run_id,
            job=job,
            config=config,
            run_dir=run_dir,
            cwd=cwd,
            pid=pid,
            start_ticks=_start_ticks(pid),  # our unreaped child: /proc still has it
            started_at=started,
            timeout=timeout,
        )
        try:
            await handle.save(run_dir / "handle.json")
        except RecordError as exc:
            await handle.cancel()  # a run nobody could find again must not go on
            raise SubmitError(f"Cannot write the run record in '{run_dir}': {exc}") from exc
        return handle


class NohupRunHandle(RunHandle):
    """Handle of one nohup run; works from any process on the same machine.

    Its states: RUNNING from submit on (the wrapper is up); then SUCCEEDED or
    FAILED by the recorded exit status; TIMED_OUT when ``timeout`` ended it;
    CANCELLED when the ``cancelled`` marker predates the end (or there is no end);
    LOST when the wrapper is gone without recording an end, or the folder is gone.
    """

    backend_type: ClassVar[str] = "nohup"

    def __init__(
        self,
        *,
        run_id: str,
        job: Job,
        config: NohupConfig,
        run_dir: Path,
        cwd: Path,
        pid: int,
        start_ticks: int | None,
        started_at: float,
        timeout: float,
    ) -> None:
        super().__init__(
            run_id=run_id, job=job, config=config, state=RunState.RUNNING, run_dir=run_dir
        )
        self._nohup = config
        self._dir = run_dir
        self._cwd = cwd
        self._pid = pid
        self._ticks = start_ticks
        self._started_at = started_at
        self._timeout = timeout

    @property
    def pid(self) -> int:
        """Pid of the run's wrapper; also the id of the run's session."""
        return self._pid

    # -- observing ---------------------------------------------------------------

    def _read_floats(self, name: str, count: int) -> list[float] | None:
        """The ``count`` numbers in a small file of the run folder, or None without them."""
        try:
            numbers = [float(word) for word in (self._dir / name).read_text().split()]
        except (OSError, ValueError):
            return None
        return numbers if len(numbers) == count else None

    def _observe(self) -> RunResult | None:
        """The run's result once it has ended, else None (still RUNNING)."""
        end = self._read_floats("exit", 2)
        if end is None:
            if not self._dir.is_dir():
                return self._make_result(RunState.LOST, error=f"run folder {self._dir} is gone")
            if _alive(self._pid, self._ticks):
                return None
            end = self._read_floats("exit", 2)  # it may have ended between the two looks
        cancelled = self._read_floats("cancelled", 1)
        if cancelled is not None and (end is None or cancelled[0] <= end[1]):
            code = None if end is None else int(end[0])
            ended = cancelled[0] if end is None else end[1]
            return self._make_result(RunState.CANCELLED, code=code, ended=ended, error="cancelled")
        if end is None:
            why = "the run's wrapper ended without recording an exit status"
            return self._make_result(RunState.LOST, error=why)
        code, ended = int(end[0]), end[1]
        # timeout exits 124 after its TERM, 137 when the command needed its KILL.
        if code in (124, 137) and ended - self._started_at >= self._timeout:
            error = f"timed out after {self._timeout:g}s"
            return self._make_result(RunState.TIMED_OUT, ended=ended, error=error)
        if code == 0:
            return self._make_result(RunState.SUCCEEDED, code=code, ended=ended)
        tail = _last_line(self._dir / "stderr")
        error = f"exit code {code}: {tail}" if tail else f"exit code {code}"
        return self._make_result(RunState.FAILED, code=code, ended=ended, error=error)

    def _make_result(
        self,
        state: RunState,
        *,
        code: int | None = None,
        ended: float | None = None,
        error: str | None = None,
    ) -> RunResult:
        outputs = self._collect_outputs() if self._dir.is_dir() else []
        return RunResult(
            run_id=self.run_id,
            state=state,
            exit_code=code,
            started_at=_utc(self._started_at),
            ended_at=None if ended is None else _utc(ended),
            stdout=self._dir / "stdout",
            stderr=self._dir / "stderr",
            outputs=outputs,
            error=error,
        )

    def _collect_outputs(self) -> list[Path]:
        """Files the job's output globs match; copied to ``outputs/`` if it worked elsewhere."""
        found: list[Path] = []
        inside = self._cwd == self._dir
        for pattern in self._job.outputs:
            for path in sorted(self._cwd.glob(pattern)):
                relative = path.relative_to(self._cwd)
                if not path.is_file() or (inside and relative.parts[0] in _OWN_FILES):
                    continue
                if not inside:
                    target = self._dir / "outputs" / relative
                    target.parent.mkdir(parents=True, exist_ok=True)
                    _copy_atomic(path, target)
                    path = target
                if path not in found:
                    found.append(path)
        return found

    async def refresh(self) -> RunState:
        """Read the exit and cancel files, or check that the wrapper still lives."""
        _reap_children()
        if self._result is None:
            result = self._observe()
            if result is not None:
                self._finish(result)
        return self._state

    async def _wait_done(self) -> RunResult:
        """Poll every 0.1 s: simple and enough for an example.

        A real plugin would wait for an event instead (a pidfd, inotify on the run
        folder, or one shared watcher for all its runs), as tether's local backend does.
        """
        while not (await self.refresh()).is_terminal:  # noqa: ASYNC110
            await anyio.sleep(_POLL)
        assert self._result is not None
        return self._result

    # -- acting -----------------------------------------------------------------

    async def cancel(self) -> None:
        """TERM the run's whole session, then KILL what is left after ``cancel_grace``.

        The ``cancelled`` marker is written first, so every process sees CANCELLED.
        Idempotent, a no-op on a finished run, and shielded: a cancelled caller still
        leaves nothing running.
        """
        with anyio.CancelScope(shield=True):
            if (await self.refresh()).is_terminal:
                return
            marker = self._dir / "cancelled"
            if not marker.exists():
                _write_atomic(marker, f"{time.time()!r}\n")
            # The wrapper, timeout (which makes a process group of its own) and the
            # command all share the session the wrapper started: signal all of it.
            _signal_session(self._pid, self._ticks, signal.SIGTERM)
            with anyio.move_on_after(self._nohup.cancel_grace):
                while _session(self._pid):  # noqa: ASYNC110 (a poll, like _wait_done)
                    await anyio.sleep(_POLL)
            _signal_session(self._pid, self._ticks, signal.SIGKILL)
            await self.refresh()

    async def logs(
        self, stream: Stream = "stdout", *, follow: bool = False
    ) -> AsyncGenerator[str, None]:
        """Lines of the run's stdout or stderr file; ``follow`` polls until the run ends."""
        if stream not in ("stdout", "stderr"):
            raise ValueError(f"stream must be 'stdout' or 'stderr', not {stream!r}")
        position, rest = 0, b""
        while True:
            # Look at the state before reading: what the run wrote before it ended is read.
            ended = not follow or (await self.refresh()).is_terminal
            try:
                with open(self._dir / stream, "rb") as file:
                    file.seek(position)
                    chunk = file.read()
            except FileNotFoundError:
                chunk = b""
            position += len(chunk)
            *lines, rest = (rest + chunk).split(b"\n")
            for line in lines:
                yield line.decode(errors="replace")
            if ended:
                break
            await anyio.sleep(_POLL)
        if rest:
            yield rest.decode(errors="replace")

    # -- records ------------------------------------------------------------------

    def _record_data(self) -> dict[str, Any]:
        return {
            "run_dir": str(self._dir),
            "cwd": str(self._cwd),
            "pid": self._pid,
            "start_ticks": self._ticks,
            "started_at": self._started_at,
            "timeout": self._timeout,
        }

    @classmethod
    def _from_record(
        cls, run_id: str, job: Job, config: BackendConfig, data: dict[str, Any]
    ) -> NohupRunHandle:
        if not isinstance(config, NohupConfig):
            raise TypeError(f"expected a NohupConfig, got {type(config).__name__}")
        ticks = data["start_ticks"]
        return cls(
            run_id=run_id,
            job=job,
            config=config,
            run_dir=Path(data["run_dir"]),
            cwd=Path(data["cwd"]),
            pid=int(data["pid"]),
            start_ticks=None if ticks is None else int(ticks),
            started_at=float(data["started_at"]),
            timeout=float(data["timeout"]),
        )


# -- helpers ---------------------------------------------------------------------

# The wrappers this process started stay its children until they exit: keep their
# Popen objects and poll them now and then, so that none is left a zombie.
_children: list[subprocess.Popen[bytes]] = []


def _launch(script: Path, args: list[str], env: dict[str, str]) -> int:
    """Start the wrapper in a new session, detached from our stdio; return its pid.

    Popen returns once the wrapper is exec'd: quick enough for the event loop.
    """
    process = subprocess.Popen(
        ["/bin/sh", str(script), *args],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    _children.append(process)
    return process.pid


def _reap_children() -> None:
    _children[:] = [process for process in _children if process.poll() is None]


def _argv(job: Job) -> list[str]:
    """A string command runs under ``/bin/sh -c``; a list is the argv itself."""
    if job.command is None:
        raise ConfigError(f"Job {job.name!r} has no command: the nohup backend needs one.")
    if isinstance(job.command, str):
        return ["/bin/sh", "-c", job.command]
    return [str(part) for part in job.command]


def _new_run_id(name: str) -> str:
    """``<name>-<UTC time>-<random>``: sortable and unique."""
    slug = re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-.")[:40] or "run"
    return f"{slug}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(4)}"


def _copy_inputs(inputs: list[Path], run_dir: Path) -> None:
    for source in inputs:
        source = source.expanduser()
        if not source.exists():
            raise SubmitError(f"Input '{source}' does not exist: fix the job's inputs.")
        if source.name in _OWN_FILES:
            raise SubmitError(f"Input '{source}' is named like a file of the run: rename it.")
        if source.is_dir():
            shutil.copytree(source, run_dir / source.name, symlinks=True)
        else:
            shutil.copy2(source, run_dir / source.name)


def _write_atomic(path: Path, text: str) -> None:
    """Readers see the whole file or none: write a temp file, then rename it over."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as file:
        file.write(text)
    os.replace(tmp, path)


def _copy_atomic(source: Path, target: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    os.close(fd)
    try:
        shutil.copy2(source, tmp)
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _last_line(path: Path) -> str:
    """The last non-empty line of a log file (read from its end), or ''."""
    try:
        with open(path, "rb") as file:
            file.seek(max(0, file.seek(0, os.SEEK_END) - 4096))
            tail = file.read().decode(errors="replace")
    except OSError:
        return ""
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


# -- /proc (see proc(5)) --------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat from field 3 (state) on, or None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            text = file.read()
    except OSError:
        return None
    # Field 2, the command name, may hold spaces and ')': cut after its last ')'.
    return text[text.rindex(")") + 2 :].split()


def _start_ticks(pid: int) -> int | None:
    """Field 22: when the process started, in clock ticks since boot."""
    stat = _stat(pid)
    return None if stat is None else int(stat[19])


def _alive(pid: int, ticks: int | None) -> bool:
    """True while ``pid`` runs (a zombie does not) and is the process that started at ``ticks``."""
    stat = _stat(pid)
    if stat is None or stat[0] == "Z":
        return False
    return ticks is None or int(stat[19]) == ticks


def _session(sid: int) -> list[int]:
    """Live pids of session ``sid`` (field 6): the wrapper, timeout, the command and kids."""
    members = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None and stat[0] != "Z" and int(stat[3]) == sid:
                members.append(int(entry.name))
    return members


def _signal_session(sid: int, ticks: int | None, signum: int) -> None:
    leader = _stat(sid)
    if leader is not None and ticks is not None and int(leader[19]) != ticks:
        # The wrapper's pid was reused: Linux keeps a session's id reserved while any
        # process is in it, so nothing of this run can be left to signal.
        return
    for pid in _session(sid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)
