"""The Slurm commands tether runs (sbatch, squeue, scancel), awaited without blocking.

Every call is ``posix_spawn``ed and awaited through a pidfd and its pipes, on the
event loop (asyncio or trio) without a thread, so a slow controller never blocks
the loop. The commands are looked up on ``PATH``
at each call: a site's wrappers (or a test's counting wrapper) are honoured.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import anyio
import anyio.lowlevel

from ...errors import BackendError, BackendUnavailableError, SubmitError

#: Longest a Slurm command may take before tether gives up on it (seconds).
COMMAND_TIMEOUT = 60.0
#: Job ids per squeue call; longer lists are split (one call per chunk).
SQUEUE_CHUNK = 500

#: Slurm job states in which the job is still queued or running.
ACTIVE_PENDING = frozenset(
    {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD"}
)
ACTIVE_RUNNING = frozenset(
    {
        "RUNNING",
        "COMPLETING",
        "SIGNALING",
        "STAGE_OUT",
        "SUSPENDED",
        "STOPPED",
        "RESIZING",
        "POWER_UP_NODE",
        "UPDATE_DB",
    }
)


@dataclass(frozen=True)
class QueueEntry:
    """What squeue says about one job: its state, Slurm's reason, its name and script."""

    state: str
    reason: str
    name: str = ""
    command: str = ""

    @property
    def active(self) -> bool:
        """Still queued or running (not a final state)."""
        return self.state in ACTIVE_PENDING or self.state in ACTIVE_RUNNING

    @property
    def pending(self) -> bool:
        return self.state in ACTIVE_PENDING


class QueueUnavailable(Exception):
    """squeue did not answer (controller down, command missing): nothing is known."""


_throttles: weakref.WeakKeyDictionary[object, tuple[int, anyio.Semaphore]] = (
    weakref.WeakKeyDictionary()
)


def loop_key() -> object:
    """This event loop (asyncio's loop, trio's token): a key that dies with the loop."""
    return anyio.lowlevel.current_token().native_token


def _throttle(limit: int) -> anyio.Semaphore:
    """This event loop's bound on concurrent sbatch (and scancel) processes."""
    token = loop_key()
    known = _throttles.get(token)
    if known is None or known[0] != limit:
        known = (limit, anyio.Semaphore(limit))
        _throttles[token] = known
    return known[1]


async def _spawned(argv: list[str], env: Mapping[str, str]) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv`` to its end with its output captured: ``posix_spawn`` and a pidfd.

    No fork of this (large) process and no child-watcher thread, which is what
    asyncio's subprocesses cost: this is on the path of every submit. Cancelled,
    the command is killed and reaped.
    """
    exe = shutil.which(argv[0], path=env.get("PATH", os.defpath))
    if exe is None:
        raise FileNotFoundError(argv[0])
    out_read, out_write = os.pipe()
    err_read, err_write = os.pipe()
    try:
        pid = os.posix_spawn(
            exe,
            argv,
            env,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, out_write, 1),
                (os.POSIX_SPAWN_DUP2, err_write, 2),
            ],
        )
    finally:
        os.close(out_write)
        os.close(err_write)
    pidfd = os.pidfd_open(pid)
    chunks: dict[int, list[bytes]] = {out_read: [], err_read: []}

    async def drain(fd: int) -> None:
        while True:
            await anyio.wait_readable(fd)
            data = os.read(fd, 65536)
            if not data:
                return
            chunks[fd].append(data)

    try:
        for fd in (out_read, err_read):
            os.set_blocking(fd, False)
        async with anyio.create_task_group() as group:
            group.start_soon(drain, out_read)
            group.start_soon(drain, err_read)
            await anyio.wait_readable(pidfd)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        raise
    finally:
        for fd in (out_read, err_read, pidfd):
            os.close(fd)
        _, status = os.waitpid(pid, 0)  # noqa: ASYNC222 (it has exited, or was just KILLed)
    code = os.waitstatus_to_exitcode(status)
    return subprocess.CompletedProcess(
        argv, code, b"".join(chunks[out_read]), b"".join(chunks[err_read])
    )


async def _run(
    argv: Sequence[str], env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    try:
        with anyio.fail_after(COMMAND_TIMEOUT):
            return await _spawned(list(argv), os.environ if env is None else env)
    except FileNotFoundError as exc:
        raise BackendUnavailableError(
            f"{argv[0]} not found on PATH: run tether on a Slurm login node, or put the Slurm "
            "commands on PATH."
        ) from exc
    except TimeoutError as exc:
        raise BackendError(
            f"{argv[0]} did not answer within {COMMAND_TIMEOUT:g}s (is slurmctld overloaded?)"
        ) from exc


def _said(proc: subprocess.CompletedProcess[bytes]) -> str:
    text = (proc.stderr or proc.stdout or b"").decode(errors="replace").strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " ".join(lines[-3:]) if lines else f"exit status {proc.returncode}"


async def sbatch(argv: Sequence[str], env: Mapping[str, str], limit: int) -> str:
    """Submit with ``sbatch --parsable ARGV``; the job id. SubmitError carries Slurm's words."""
    async with _throttle(limit):
        proc = await _run(["sbatch", "--parsable", *argv], env)
    if proc.returncode != 0:
        raise SubmitError(f"sbatch refused the job: {_said(proc)}")
    out = proc.stdout.decode(errors="replace").strip().splitlines()
    job_id = out[-1].split(";")[0].strip() if out else ""
    if not job_id.isdigit():
        raise SubmitError(f"sbatch printed no job id (it said {_said(proc)!r})")
    return job_id


async def squeue(ids: Iterable[str]) -> dict[str, QueueEntry]:
    """The queue's entries for ``ids`` (job ids or array job ids, members expanded).

    Jobs the controller no longer knows are absent. One call per chunk of
    :data:`SQUEUE_CHUNK` ids. Raises :class:`QueueUnavailable` when squeue fails.
    """
    wanted = sorted(set(ids), key=lambda i: (len(i), i))
    found: dict[str, QueueEntry] = {}
    for start in range(0, len(wanted), SQUEUE_CHUNK):
        chunk = wanted[start : start + SQUEUE_CHUNK]
        argv = ["squeue", "--noheader", "--array", "--states=all", "--format=%i|%T|%r|%j|%o"]
        try:
            proc = await _run([*argv, f"--jobs={','.join(chunk)}"], _quiet_env())
        except (BackendUnavailableError, BackendError) as exc:
            raise QueueUnavailable(str(exc)) from exc
        if proc.returncode != 0:
            said = _said(proc)
            if "Invalid job id" in said:
                continue  # the only id asked about is unknown now
            raise QueueUnavailable(f"squeue failed: {said}")
        for line in proc.stdout.decode(errors="replace").splitlines():
            parts = line.strip().split("|", 4)
            if len(parts) == 5:
                found[parts[0]] = QueueEntry(
                    state=parts[1].split()[0] if parts[1] else "UNKNOWN",
                    reason=parts[2],
                    name=parts[3],
                    command=parts[4],
                )
    return found


async def scancel(job_id: str, *options: str, limit: int) -> str | None:
    """``scancel OPTIONS JOB_ID`` (at most ``limit`` at once, like sbatch); None when
    done, else what Slurm said."""
    async with _throttle(limit):
        proc = await _run(["scancel", *options, job_id], _quiet_env())
    if proc.returncode == 0:
        return None
    return _said(proc)


async def find_by_name(name: str) -> list[tuple[str, str, str]]:
    """(job id, state, command) of this user's jobs named ``name``, newest last."""
    argv = [
        "squeue",
        "--noheader",
        "--states=all",
        f"--user={os.getuid()}",
        f"--name={name}",
        "--format=%i|%T|%o",
    ]
    proc = await _run(argv, _quiet_env())
    if proc.returncode != 0:
        raise BackendError(f"squeue could not look up jobs named {name!r}: {_said(proc)}")
    rows = []
    for line in proc.stdout.decode(errors="replace").splitlines():
        parts = line.strip().split("|", 2)
        if len(parts) == 3:
            rows.append((parts[0], parts[1], parts[2]))
    return rows


def _quiet_env() -> dict[str, str]:
    """This environment without squeue's and scancel's input variables (SQUEUE_FORMAT…),
    which would change what they print."""
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SQUEUE_", "SCANCEL_", "SLURM_TIME_FORMAT"))
    }
