"""``DockerBackend``: creates and starts each job's container, and prunes ended ones."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import anyio

from ... import _proc
from ..._files import default_runs_dir
from ..._runs import check_inputs_reachable, chosen_run_id, make_run_dir, stage_inputs
from ..._version import __version__
from ...backend import Backend
from ...call import refuse_calls
from ...capabilities import Availability
from ...errors import ConfigError, RecordError, SubmitError
from ...job import Job, parse_memory
from ...records import write_record
from ...result import RunState
from . import _engine as eng
from . import _watchdog
from ._build import ensure_image

if TYPE_CHECKING:
    import aiodocker

from .config import CAPABILITIES, LABEL_RUN_DIR, LABEL_RUN_ID, LABEL_VERSION, DockerConfig
from .handle import DockerRunHandle, container_name

#: Seconds find() waits for the watchdog of a created container to decide.
_FIND_PATIENCE = 60.0


def gpu_requests(count: int) -> list[dict[str, Any]]:
    """The engine's device requests for ``count`` GPUs (``docker run --gpus N``).

    Any ``count`` GPUs of the engine's GPU driver (the NVIDIA container toolkit
    registers it); an engine without one refuses to start the container, and the
    submit says so.
    """
    return [
        {"Driver": "", "Count": count, "DeviceIDs": None, "Capabilities": [["gpu"]], "Options": {}}
    ]


class DockerBackend(Backend[DockerConfig]):
    """Starts each job in its own container; see the module docstring."""

    capabilities: ClassVar[frozenset[str]] = CAPABILITIES

    async def check(self) -> Availability:
        """Whether this config's engine answers (``docker_host``, else the default)."""
        return await anyio.to_thread.run_sync(eng.ping, self.config.docker_host)

    async def cache_fields(self) -> dict[str, Any]:
        """The config's result-relevant fields, with the image's id in place of its tag
        (a tag can point at another image tomorrow); for a dockerfile, the id of the
        image its context builds (built now if needed)."""
        fields = self.config.cache_fields()
        async with eng.engine(self.config.docker_host, submitting=True) as client:
            image = await self._image(client)
            info = await client.images.inspect(image)
        fields["image"] = str(info["Id"])
        fields.pop("dockerfile", None)
        fields.pop("build_context", None)
        fields.pop("build_args", None)
        return fields

    def _command(self, job: Job) -> list[str] | None:
        """The container's Cmd; None keeps the image's own CMD."""
        config = self.config
        command = job.command if job.command is not None else config.executable
        if command is None:
            if config.mpiexec:
                raise ConfigError(
                    f"Job {job.name!r} has no command for mpiexec to launch: give the job a "
                    "command or set DockerConfig.executable."
                )
            return None
        launcher = shlex.split(config.mpiexec) if config.mpiexec else []
        if isinstance(command, list):
            return [*launcher, *(str(part) for part in command)]
        if config.shell:
            prefix = f"{config.mpiexec} " if config.mpiexec else ""
            return ["/bin/sh", "-c", prefix + command]
        try:
            return [*launcher, *shlex.split(command)]
        except ValueError as exc:
            raise ConfigError(f"Job {job.name!r}: cannot split command ({exc}).") from exc

    def _spec(
        self,
        job: Job,
        *,
        image: str,
        command: list[str] | None,
        run_id: str,
        run_dir: Path,
        workdir: Path | None,
    ) -> dict[str, Any]:
        """The engine's container-create body."""
        config = self.config
        mount = config.mount_point
        env = {
            **config.resolved_env(),
            **job.resolved_env(),
            "TETHER_RUN_ID": run_id,
            "TETHER_RUN_DIR": mount,
        }
        binds = [f"{run_dir}:{mount}:rw"]
        if workdir is not None:
            binds.append(f"{workdir}:{workdir}:rw")
        binds += config.volumes
        host: dict[str, Any] = {
            "Binds": binds,
            "NetworkMode": config.network_mode,
            "Init": config.init,
            "AutoRemove": False,
        }
        cpus = job.resources.cpus or config.cpu
        if cpus:
            host["NanoCpus"] = int(cpus * 1_000_000_000)
        memory = job.resources.memory or config.memory
        if memory:
            # No swap on top: the limit is the run's memory, and going over it is an
            # OOM kill the result reports, not a slow crawl through swap.
            host["Memory"] = host["MemorySwap"] = parse_memory(memory)
        if job.resources.gpus:
            host["DeviceRequests"] = gpu_requests(job.resources.gpus)
        spec: dict[str, Any] = {
            "Image": image,
            "Env": [f"{key}={value}" for key, value in env.items()],
            "Labels": {
                **config.labels,
                LABEL_RUN_ID: run_id,
                LABEL_VERSION: __version__,
                LABEL_RUN_DIR: str(run_dir),
            },
            "WorkingDir": str(workdir) if workdir is not None else mount,
            # uid 0 needs no passwd lookup: FROM-scratch images have no /etc/passwd.
            "User": "0" if config.user == "root" else config.user,
            "Tty": False,
            "OpenStdin": False,
            "AttachStdin": False,
            "AttachStdout": False,
            "AttachStderr": False,
            "StopTimeout": config.cancel_grace,
            "HostConfig": host,
        }
        if command is not None:
            spec["Cmd"] = command
        return spec

    async def _image(self, client: aiodocker.Docker) -> str:
        config = self.config
        if config.image is not None:
            return config.image
        assert config.dockerfile is not None and config.build_context is not None
        return await ensure_image(
            client, config.build_context, config.dockerfile, config.build_args
        )

    async def _create(self, client: aiodocker.Docker, spec: dict[str, Any], name: str) -> str:
        container_id = await eng.create(client, spec, name)
        if container_id is None and self.config.pull:
            await eng.pull(client, spec["Image"])
            container_id = await eng.create(client, spec, name)
        if container_id is None:
            where = eng.engine_url(self.config.docker_host)
            raise SubmitError(
                f"Image {spec['Image']!r} is not on the Docker engine at {where}: build or "
                "pull it first (docker pull), or set pull: true."
            )
        return container_id

    async def submit(self, job: Job, *, run_id: str | None = None) -> DockerRunHandle:
        """Create and start the job's container and return at once.

        The run's record (``handle.json``) is written before the container starts,
        and a detached watchdog enforces the timeout and records the end with nobody
        attached (see ``_watchdog``). ``run_id`` (default: a new one) names the run,
        its folder and its container; see :meth:`find`.
        """
        refuse_calls(job, "Docker")
        config = self.config
        command = self._command(job)
        timeout = float(config.timeout)
        if job.resources.walltime is not None:
            timeout = min(timeout, job.resources.walltime)
        workdir = job.workdir or config.working_dir
        if workdir is not None:
            workdir = workdir.expanduser().absolute()
            if not workdir.is_dir():
                raise SubmitError(
                    f"Job {job.name!r}: working folder '{workdir}' does not exist: create it."
                )
        check_inputs_reachable(job.name, job.inputs, workdir)
        chosen = run_id is not None
        run_id = chosen_run_id(run_id, job.name)
        async with eng.engine(config.docker_host, submitting=True) as client:
            image = await self._image(client)
            if chosen:
                await self._clear_unstarted(self._runs_dir() / run_id)
            run_dir = make_run_dir(self._runs_dir(), run_id)
            container_id: str | None = None
            gate: int | None = None
            try:
                stage_inputs(job.inputs, run_dir)
                spec = self._spec(
                    job,
                    image=image,
                    command=command,
                    run_id=run_id,
                    run_dir=run_dir,
                    workdir=workdir,
                )
                pid, gate = _watchdog.spawn(run_dir, config.docker_host)
                container_id = await self._create(client, spec, container_name(run_dir))
                handle = DockerRunHandle(
                    run_id=run_id,
                    job=job,
                    config=config,
                    run_dir=run_dir,
                    workdir=workdir,
                    container_id=container_id,
                    image=image,
                    started_at=time.time(),
                    timeout=timeout,
                    watchdog=(pid, _proc.start_ticks(pid)),
                )
                # Recorded before it can start: a run that exists can always be found.
                write_record(run_dir / "handle.json", handle.to_record(), sync=False)
                refused = await eng.start(client, container_id)
                if refused is not None:  # e.g. the command is not in the image
                    await handle._record_start_failure(client, refused)
                os.write(gate, b"g")
            except BaseException:
                with anyio.CancelScope(shield=True):
                    if container_id is not None:
                        await eng.remove(client, container_id, force=True)
                    shutil.rmtree(run_dir, ignore_errors=True)
                raise
            finally:
                if gate is not None:
                    os.close(gate)
        return handle

    async def find(self, job: Job, run_id: str) -> DockerRunHandle | None:
        """The run ``submit(job, run_id=run_id)`` started, even if its submitter died early.

        The record is written before the container starts, so a run folder without
        one is a run that never started: None. A recorded container that is still
        only created is waited on until its watchdog decides: started (the handle)
        or discarded because its submitter died first (None).
        """
        from ...registry import load_handle

        record = self._runs_dir() / chosen_run_id(run_id, job.name) / "handle.json"
        if not record.is_file():
            return None
        handle = await load_handle(record)
        if not isinstance(handle, DockerRunHandle):
            raise RecordError(f"'{record}' is a {handle.backend_type!r} run, not a docker one.")
        with anyio.move_on_after(_FIND_PATIENCE):
            while await handle.refresh() is RunState.PENDING and record.is_file():  # noqa: ASYNC110
                await anyio.sleep(0.1)  # polls files another process changes
        if not record.is_file():
            return None  # discarded: it never started
        return handle

    async def _clear_unstarted(self, run_dir: Path) -> None:
        """Remove what a submit that died before its container started left in
        ``run_dir`` (no record): the created container and the folder, so that
        ``submit(job, run_id=...)`` can be called again after :meth:`find` said None."""
        if not run_dir.is_dir() or (run_dir / "handle.json").exists():
            return
        await DockerRunHandle.discard_unrecorded(run_dir, self.config.docker_host)
        with contextlib.suppress(OSError):
            shutil.rmtree(run_dir)

    def _runs_dir(self) -> Path:
        return (self.config.runs_dir or default_runs_dir()).expanduser().absolute()

    @staticmethod
    async def prune(
        docker_host: str | None = None, *, dry_run: bool = False, orphans: bool = False
    ) -> list[PrunedContainer]:
        """Remove tether's finished containers whose results are recorded.

        An ended container whose run folder has its handle but no recorded result is
        recorded first (through the handle), then removed. Containers still running
        are left alone; ended ones whose run folder is gone are *orphans*: listed,
        and removed only with ``orphans=True``. ``dry_run`` removes nothing.
        """
        from ...registry import load_handle

        report: list[PrunedContainer] = []
        async with eng.engine(docker_host) as client:
            for info in await eng.tether_containers(client):
                labels = info.get("Labels") or {}
                run_dir = Path(labels.get(LABEL_RUN_DIR, "/nonexistent"))
                entry = PrunedContainer(
                    container_id=str(info["Id"])[:12],
                    name=str((info.get("Names") or ["?"])[0]).lstrip("/"),
                    run_id=str(labels.get(LABEL_RUN_ID, "")),
                    run_dir=str(run_dir),
                    status=str(info.get("State", "")),
                    action="running",
                )
                if entry.status in ("running", "created", "paused", "restarting", "removing"):
                    report.append(entry)
                    continue
                if not (run_dir / "exit.json").exists() and (run_dir / "handle.json").exists():
                    handle = await load_handle(run_dir / "handle.json")  # records the end
                    await handle.refresh()
                if (run_dir / "exit.json").exists():
                    entry.action = "would remove" if dry_run else "removed"
                elif orphans:
                    entry.action = "would remove orphan" if dry_run else "removed orphan"
                else:
                    entry.action = "orphan"
                if entry.action in ("removed", "removed orphan"):
                    await eng.remove(client, str(info["Id"]), force=True)
                report.append(entry)
        return report


@dataclass
class PrunedContainer:
    """One tether container seen by :meth:`DockerBackend.prune`, and what was done."""

    container_id: str
    name: str
    run_id: str
    run_dir: str
    status: str
    #: running | removed | would remove | orphan | removed orphan | would remove orphan
    action: str

    def to_json(self) -> dict[str, str]:
        """The entry as a JSON-ready dict."""
        return asdict(self)
