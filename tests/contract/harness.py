"""One harness per backend: how to express 'a run that takes N seconds and prints X'.

The contract suite is written once against this small interface; a new backend
joins the suite by adding a harness here.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from tether import (
    Backend,
    CachedBackend,
    CachedRunHandle,
    Call,
    DaskConfig,
    DaskRunHandle,
    DockerConfig,
    DockerRunHandle,
    DummyConfig,
    DummyRunHandle,
    InlineConfig,
    InlineRunHandle,
    Job,
    LocalConfig,
    LocalRunHandle,
    RetryingBackend,
    RetryPolicy,
    RetryRunHandle,
    RunHandle,
    SlurmConfig,
    SlurmRunHandle,
    SQLiteStore,
)
from tether._proc import is_running, session_members
from tether.backends.dask.handle import read_started

from ..dask_support import ADDRESS_VARIABLE, release_run
from ..services import IMPORTED_IMAGE, docker_api, slurm_jobs
from .call_target import contract_call


class Harness(ABC):
    """Makes (backend, job) pairs with a given behaviour, and inspects leftovers."""

    name: str
    #: Event loops the backend runs under (anyio backend names).
    loops: tuple[str, ...] = ("asyncio", "trio")
    #: Whether jobs may carry their own environment (in-process runs share this one's).
    supports_env: bool = True

    def __init__(self, runs_dir: Path) -> None:
        self.runs_dir = runs_dir

    @abstractmethod
    def make(
        self,
        *,
        lines: list[str] = (),  # type: ignore[assignment]
        duration: float = 0.0,
        exit_code: int = 0,
        env: dict[str, Any] | None = None,
        config_env: dict[str, Any] | None = None,
        walltime: float | None = None,
    ) -> tuple[Backend[Any], Job]:
        """A backend and a job that prints ``lines`` over ``duration`` s, then exits."""

    @abstractmethod
    def assert_nothing_running(self, handle: RunHandle) -> None:
        """Fail if anything of the run is still alive."""

    @abstractmethod
    def lose(self, handle: RunHandle) -> None:
        """Make the run impossible to find, as a crash or a cleanup would."""


class LocalHarness(Harness):
    name = "local"

    def make(
        self, *, lines=(), duration=0.0, exit_code=0, env=None, config_env=None, walltime=None
    ):  # type: ignore[no-untyped-def]
        steps = []
        pause = duration / max(len(lines), 1)
        for line in lines:
            steps.append(f"echo {shlex.quote(line)}")
            if pause:
                steps.append(f"sleep {pause:.3f}")
        if not lines and duration:
            steps.append(f"sleep {duration:.3f}")
        steps.append(f"exit {exit_code}")
        config = LocalConfig(runs_dir=self.runs_dir, env_vars=config_env or {}, cancel_grace=2)
        job = Job(
            name="contract",
            command="; ".join(steps),
            env=env or {},
            resources={"walltime": walltime} if walltime else {},
        )
        return config.create(), job

    def assert_nothing_running(self, handle: RunHandle) -> None:
        assert isinstance(handle, LocalRunHandle)
        assert not is_running(handle.pid, None), "supervisor alive"
        assert list(session_members(handle.pid)) == [], "processes of the run still alive"

    def lose(self, handle: RunHandle) -> None:
        assert isinstance(handle, LocalRunHandle)
        # SIGKILL the supervisor and its run: nobody records an exit status.
        for pid in [handle.pid, *session_members(handle.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


class PythonSupervisorHarness(LocalHarness):
    """The local backend with the pure-Python supervisor (no C compiler machines)."""

    name = "local-python"


class DummyHarness(Harness):
    name = "dummy"

    def make(
        self, *, lines=(), duration=0.0, exit_code=0, env=None, config_env=None, walltime=None
    ):  # type: ignore[no-untyped-def]
        config = DummyConfig(
            runs_dir=self.runs_dir,
            duration=duration,
            stdout="".join(f"{line}\n" for line in lines),
            outcome="succeeded" if exit_code == 0 else "failed",
            exit_code=exit_code,
            env_vars=config_env or {},
        )
        job = Job(
            name="contract", env=env or {}, resources={"walltime": walltime} if walltime else {}
        )
        return config.create(), job

    def assert_nothing_running(self, handle: RunHandle) -> None:
        assert handle.state.is_terminal

    def lose(self, handle: RunHandle) -> None:
        assert isinstance(handle, DummyRunHandle)
        shutil.rmtree(handle.run_dir)


class NohupHarness(LocalHarness):
    """The example third-party plugin (examples/custom_backend), installed by pip.

    ``tether_nohup`` is imported here, not at the top: it exists only once the
    ``nohup_plugin`` session fixture has installed it.
    """

    name = "nohup"

    def make(
        self, *, lines=(), duration=0.0, exit_code=0, env=None, config_env=None, walltime=None
    ):  # type: ignore[no-untyped-def]
        from tether_nohup import NohupConfig

        # The same shell command as the local backend's; only the backend differs.
        _, job = super().make(
            lines=lines, duration=duration, exit_code=exit_code, env=env, walltime=walltime
        )
        config = NohupConfig(runs_dir=self.runs_dir, env_vars=config_env or {}, cancel_grace=2)
        return config.create(), job

    def assert_nothing_running(self, handle: RunHandle) -> None:
        from tether_nohup import NohupRunHandle

        assert isinstance(handle, NohupRunHandle)
        assert not is_running(handle.pid, None), "wrapper alive"
        assert list(session_members(handle.pid)) == [], "processes of the run still alive"

    def lose(self, handle: RunHandle) -> None:
        from tether_nohup import NohupRunHandle

        assert isinstance(handle, NohupRunHandle)
        # SIGKILL the wrapper and everything it started: nobody records an exit status.
        for pid in [handle.pid, *session_members(handle.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


class DockerHarness(LocalHarness):
    """Containers of the busybox test image on the real engine (asyncio only: aiodocker)."""

    name = "docker"
    loops = ("asyncio",)

    def make(
        self, *, lines=(), duration=0.0, exit_code=0, env=None, config_env=None, walltime=None
    ):  # type: ignore[no-untyped-def]
        # The same shell command as the local backend's, run by the image's busybox sh.
        _, job = super().make(
            lines=lines, duration=duration, exit_code=exit_code, env=env, walltime=walltime
        )
        config = DockerConfig(
            image=IMPORTED_IMAGE, runs_dir=self.runs_dir, env_vars=config_env or {}, cancel_grace=2
        )
        return config.create(), job

    def assert_nothing_running(self, handle: RunHandle) -> None:
        assert isinstance(handle, DockerRunHandle)
        status, info = docker_api("GET", f"/containers/{handle.container_id}/json")
        assert status in (200, 404), info
        if status == 200:
            assert not info["State"]["Running"], f"container {handle.container_id} still runs"
            assert not handle.config.remove_container, "recorded container was not removed"

    def lose(self, handle: RunHandle) -> None:
        assert isinstance(handle, DockerRunHandle)
        # Kill and delete the container: nobody records its result.
        status, info = docker_api("DELETE", f"/containers/{handle.container_id}?force=1")
        assert status == 204, info


#: Slurm job states of a job that is over.
_SLURM_ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}


class SlurmHarness(LocalHarness):
    """Batch jobs on the real one-node cluster (scripts/slurm-cluster.sh)."""

    name = "slurm"

    def config(self, config_env: dict[str, Any] | None) -> SlurmConfig:
        return SlurmConfig(
            runs_dir=self.runs_dir,
            env_vars=config_env or {},
            cancel_grace=2,
            lost_grace=3,
            poll_interval=0.5,
        )

    def make(
        self, *, lines=(), duration=0.0, exit_code=0, env=None, config_env=None, walltime=None
    ):  # type: ignore[no-untyped-def]
        # The same shell command as the local backend's, run on the node by /bin/sh.
        _, job = super().make(
            lines=lines, duration=duration, exit_code=exit_code, env=env, walltime=walltime
        )
        return self.config(config_env).create(), job

    def assert_nothing_running(self, handle: RunHandle) -> None:
        assert isinstance(handle, SlurmRunHandle)
        # The run's supervisor recorded its end only once nothing of it ran; its own
        # exit, and Slurm's bookkeeping of the job's end, follow within moments.
        deadline = time.monotonic() + 10
        while _naming(str(handle.run_dir)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _naming(str(handle.run_dir)), "the run's supervisor is alive"
        while (states := slurm_jobs(handle.job_id)) and time.monotonic() < deadline:
            if set(states.values()) <= _SLURM_ENDED:
                break
            time.sleep(0.2)
        assert set(states.values()) <= _SLURM_ENDED, f"job {handle.job_id} still {states}"

    def lose(self, handle: RunHandle) -> None:
        assert isinstance(handle, SlurmRunHandle)
        kill_run(handle)


def _naming(argument: str) -> list[int]:
    """Live processes with ``argument`` as one of their command line's arguments."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if argument.encode() in (entry / "cmdline").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
    return found


def kill_run(handle: SlurmRunHandle) -> None:
    """SIGKILL a Slurm run's supervisor and everything under it, as a crash of the
    node would: nobody records an outcome. Waits for the job to start first."""
    deadline = time.monotonic() + 60
    while not (found := _naming(str(handle.run_dir))) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert found, f"job {handle.job_id} never started its supervisor"
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_bytes()
            parents[int(entry.name)] = int(stat[stat.rindex(b")") + 2 :].split()[1])
    tree = set(found)
    while grown := {pid for pid, ppid in parents.items() if ppid in tree} - tree:
        tree |= grown
    for pid in sorted(tree, reverse=True):  # children first, the supervisor last
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


class SlurmCallHarness(SlurmHarness):
    """``Call`` jobs on the cluster: the worker module runs them on the node."""

    name = "slurm-call"

    def make(
        self, *, lines=(), duration=0.0, exit_code=0, env=None, config_env=None, walltime=None
    ):  # type: ignore[no-untyped-def]
        backend = self.config(config_env).create()
        return backend, _contract_call(lines, duration, exit_code, env, walltime)


def _contract_call(
    lines: Any, duration: float, exit_code: int, env: dict[str, Any] | None, walltime: float | None
) -> Call:
    """The Call every Call harness runs: print ``lines`` over ``duration``, then exit."""
    return Call(contract_call, list(lines), duration, exit_code).options(
        name="contract",
        env=env or {},
        resources={"walltime": walltime} if walltime else {},
    )


class LocalCallHarness(LocalHarness):
    """``Call`` jobs on the local backend: the worker module runs them as commands."""

    name = "local-call"

    def make(
        self, *, lines=(), duration=0.0, exit_code=0, env=None, config_env=None, walltime=None
    ):  # type: ignore[no-untyped-def]
        config = LocalConfig(runs_dir=self.runs_dir, env_vars=config_env or {}, cancel_grace=2)
        return config.create(), _contract_call(lines, duration, exit_code, env, walltime)


class InlineHarness(Harness):
    """``Call`` jobs on the inline backend in one of its modes."""

    mode: str

    def __init__(self, runs_dir: Path) -> None:
        super().__init__(runs_dir)
        self.supports_env = self.mode == "processes"

    def make(
        self, *, lines=(), duration=0.0, exit_code=0, env=None, config_env=None, walltime=None
    ):  # type: ignore[no-untyped-def]
        config = InlineConfig(mode=self.mode, env_vars=config_env or {}, cancel_grace=2)
        return config.create(), _contract_call(lines, duration, exit_code, env, walltime)

    def assert_nothing_running(self, handle: RunHandle) -> None:
        assert isinstance(handle, InlineRunHandle) and handle._run is not None
        run = handle._run
        assert run.state.is_terminal, "run not ended"
        assert not run.in_call, "the call is still running in its thread"
        if run.worker_pid is not None and run.state.value in ("CANCELLED", "TIMED_OUT"):
            assert not is_running(run.worker_pid, None), "the call's worker process is alive"

    def lose(self, handle: RunHandle) -> None:
        raise AssertionError("inline runs are lost with their process; see the contract tests")


class InlineSequentialHarness(InlineHarness):
    name = "inline-sequential"
    mode = "sequential"


class InlineThreadsHarness(InlineHarness):
    name = "inline-threads"
    mode = "threads"


class InlineProcessesHarness(InlineHarness):
    name = "inline-processes"
    mode = "processes"


class DaskHarness(LocalHarness):
    """Command jobs as tasks on a real external scheduler with two worker processes
    (tests/dask_support.py; asyncio only: distributed's asynchronous client)."""

    name = "dask"
    loops = ("asyncio",)

    def config(self, config_env: dict[str, Any] | None) -> DaskConfig:
        return DaskConfig(
            address=os.environ[ADDRESS_VARIABLE],
            runs_dir=self.runs_dir,
            env_vars=config_env or {},
            cancel_grace=2,
        )

    def make(
        self, *, lines=(), duration=0.0, exit_code=0, env=None, config_env=None, walltime=None
    ):  # type: ignore[no-untyped-def]
        # The same shell command as the local backend's, run on the worker by /bin/sh.
        _, job = super().make(
            lines=lines, duration=duration, exit_code=exit_code, env=env, walltime=walltime
        )
        return self.config(config_env).create(), job

    def assert_nothing_running(self, handle: RunHandle) -> None:
        assert isinstance(handle, DaskRunHandle) and handle.run_dir is not None
        started = read_started(handle.run_dir)
        if started is None or started["pid"] is None:
            return  # the task never started anything
        pid = started["pid"]
        deadline = time.monotonic() + 5  # the task reaps its child just after reporting
        while is_running(pid, None) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not is_running(pid, None), "the run's process is alive"
        assert list(session_members(pid)) == [], "processes of the run still alive"

    def lose(self, handle: RunHandle) -> None:
        assert isinstance(handle, DaskRunHandle)
        release_run(handle.address, handle.run_id)


class DaskCallHarness(DaskHarness):
    """``Call`` jobs on the scheduler, each in a child process of its worker."""

    name = "dask-call"

    def make(
        self, *, lines=(), duration=0.0, exit_code=0, env=None, config_env=None, walltime=None
    ):  # type: ignore[no-untyped-def]
        backend = self.config(config_env).create()
        return backend, _contract_call(lines, duration, exit_code, env, walltime)


class CachedHarness(Harness):
    """A backend wrapped in CachedBackend (SQLite store in the test's folder): every
    contract test is a miss, run by the inner backend and shared through the store."""

    inner: type[Harness]

    def __init__(self, runs_dir: Path) -> None:
        super().__init__(runs_dir)
        self.wrapped = self.inner(runs_dir)

    def make(self, **behaviour):  # type: ignore[no-untyped-def]
        backend, job = self.wrapped.make(**behaviour)
        store = SQLiteStore(self.runs_dir.parent / "cache.sqlite")
        return CachedBackend(backend, store), job

    def assert_nothing_running(self, handle: RunHandle) -> None:
        assert isinstance(handle, CachedRunHandle) and handle.inner is not None
        self.wrapped.assert_nothing_running(handle.inner)

    def lose(self, handle: RunHandle) -> None:
        assert isinstance(handle, CachedRunHandle) and handle.inner is not None
        self.wrapped.lose(handle.inner)


class CachedLocalHarness(CachedHarness):
    name = "cached-local"
    inner = LocalHarness


class CachedDaskHarness(CachedHarness):
    name = "cached-dask"
    inner = DaskHarness
    loops = ("asyncio",)


class CachedDummyHarness(CachedHarness):
    name = "cached-dummy"
    inner = DummyHarness


class RetryHarness(Harness):
    """A backend wrapped in RetryingBackend. The policy retries only exit code 75,
    which no contract job uses: each contract holds for the handle of all attempts
    (tests/test_retry.py exercises the retries themselves)."""

    inner: type[Harness]

    def __init__(self, runs_dir: Path) -> None:
        super().__init__(runs_dir)
        self.wrapped = self.inner(runs_dir)

    def make(self, **behaviour):  # type: ignore[no-untyped-def]
        backend, job = self.wrapped.make(**behaviour)
        policy = RetryPolicy(retries=2, retry_on=["FAILED"], exit_codes=[75], backoff=0.1)
        return RetryingBackend(backend, policy), job

    def assert_nothing_running(self, handle: RunHandle) -> None:
        assert isinstance(handle, RetryRunHandle) and handle.current is not None
        self.wrapped.assert_nothing_running(handle.current)

    def lose(self, handle: RunHandle) -> None:
        assert isinstance(handle, RetryRunHandle) and handle.current is not None
        self.wrapped.lose(handle.current)


class RetryLocalHarness(RetryHarness):
    name = "retry-local"
    inner = LocalHarness


class RetryDummyHarness(RetryHarness):
    name = "retry-dummy"
    inner = DummyHarness


HARNESSES: dict[str, type[Harness]] = {
    "local": LocalHarness,
    "local-python": PythonSupervisorHarness,
    "local-call": LocalCallHarness,
    "inline-sequential": InlineSequentialHarness,
    "inline-threads": InlineThreadsHarness,
    "inline-processes": InlineProcessesHarness,
    "dummy": DummyHarness,
    "docker": DockerHarness,
    "dask": DaskHarness,
    "dask-call": DaskCallHarness,
    "slurm": SlurmHarness,
    "slurm-call": SlurmCallHarness,
    "cached-local": CachedLocalHarness,
    "cached-dummy": CachedDummyHarness,
    "cached-dask": CachedDaskHarness,
    "nohup": NohupHarness,
    "retry-local": RetryLocalHarness,
    "retry-dummy": RetryDummyHarness,
}
