"""The detached watchdog of one Docker run: its timeout and its end, with nobody attached.

The engine has no run timeout, and a container's end is recorded only by whoever
looks. So each run gets a small process of its own, in a session of its own, that
outlives its submitter: it stops the container at the deadline (``TIMED_OUT``),
records the end (logs, ``exit.json``) and removes the container, as a waiting handle
would, then exits.

It is also the run's gate, as the local supervisor is: the submitter writes ``g``
into its stdin once the run's record is written and the container started. If
the submitter dies first (end of file, no ``g``), a container that never started
is discarded with its record, so no run exists without a record and a resubmit
with the same run id starts it once; a container that did start carries on.

Usage (by :meth:`DockerBackend.submit` only): ``python -m tether.backends.docker._watchdog
RUN_DIR`` with the gate on stdin and ``TETHER_DOCKER_HOST`` naming the engine.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import anyio

from ... import _proc

#: Seconds a gate left without ``g`` waits before deciding: a start the dead
#: submitter already sent reaches the engine first.
_SETTLE = 1.0
#: Seconds of engine failures in a row after which the watchdog gives up.
_PATIENCE = 3600.0
_LOG = ".watchdog.log"


#: Watchdogs this process started and has not reaped yet.
_children: set[int] = set()


def spawn(run_dir: Path, docker_host: str | None) -> tuple[int, int]:
    """Start the run's watchdog in a session of its own (a Ctrl-C or a killed group of
    the submitter does not reach it); return its pid and the write end of its gate."""
    _proc.reap_finished(_children)
    env = dict(os.environ)
    env.pop("TETHER_DOCKER_HOST", None)
    if docker_host is not None:
        env["TETHER_DOCKER_HOST"] = docker_host
    read, write = os.pipe()
    os.set_inheritable(read, False)
    try:
        pid = os.posix_spawn(
            sys.executable,
            [sys.executable, "-m", "tether.backends.docker._watchdog", str(run_dir)],
            env,
            file_actions=[
                (os.POSIX_SPAWN_DUP2, read, 0),
                (os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_WRONLY, 0),
                (
                    os.POSIX_SPAWN_OPEN,
                    2,
                    str(run_dir / _LOG),
                    os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                    0o600,
                ),
            ],
            setsid=True,
        )
    except BaseException:
        os.close(write)
        raise
    finally:
        os.close(read)
    _children.add(pid)
    return pid, write


def _gate() -> bool:
    """Wait for the submitter: True once it wrote ``g``, False if it died first."""
    try:
        return sys.stdin.buffer.read(1) == b"g"
    except OSError:
        return False


async def _watch(run_dir: Path, started: bool) -> None:
    from ...errors import TetherError
    from ...registry import load_handle
    from .handle import DockerRunHandle

    record = run_dir / "handle.json"
    if not started:
        await anyio.sleep(_SETTLE)
        if not record.is_file():
            await DockerRunHandle.discard_unrecorded(run_dir, os.environ.get("TETHER_DOCKER_HOST"))
            return
    handle = await load_handle(record)
    assert isinstance(handle, DockerRunHandle)
    if not started and await handle.discard_if_unstarted():
        return
    failing_since: float | None = None
    while True:
        try:
            await handle.wait()
            return
        except (TetherError, OSError) as exc:  # the engine restarting, say: try again
            now = time.monotonic()
            failing_since = failing_since or now
            print(f"watchdog: {exc}", file=sys.stderr, flush=True)
            if now - failing_since > _PATIENCE:
                raise
            await anyio.sleep(5.0)


def main(argv: list[str]) -> int:
    """Run the watchdog of the run folder ``argv[1]``."""
    run_dir = Path(argv[1])
    started = _gate()
    anyio.run(_watch, run_dir, started, backend="asyncio")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
