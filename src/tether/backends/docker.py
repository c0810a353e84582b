"""Docker containers on a Docker engine, through aiodocker: detached, resumable runs.

Each run gets a run folder on this machine, bind-mounted into its container, and a
container labelled ``tether.run_id`` / ``tether.version`` / ``tether.run_dir``.
The container is never auto-removed: whoever first sees it end (a waiting handle,
a ``refresh`` after a re-attach, ``cancel``, or ``tether docker prune``) copies its
stdout and stderr into the run folder, records ``exit.json`` (first writer wins),
and only then removes it, so the exit code and the logs are never lost.

The engine has no run timeout of its own: a waiting handle stops the container at
the deadline, and a handle that re-attaches after the deadline stops it then.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import re
import shlex
import shutil
import time
from collections.abc import AsyncGenerator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import anyio
from pydantic import ConfigDict, Field, ValidationInfo, field_validator, model_validator

from .._files import default_runs_dir, write_atomic, write_json_once
from .._loading import quote
from .._runs import collect_outputs, last_line, make_run_dir, new_run_id, stage_inputs, tail_lines
from .._shield import shielded_method
from .._version import __version__
from ..backend import Backend
from ..call import refuse_calls
from ..capabilities import Availability
from ..config import FROM_RECORD, BackendConfig
from ..errors import ConfigError, SubmitError
from ..handle import RunHandle, Stream, check_stream
from ..job import Job, parse_memory
from ..records import write_record
from ..result import RunResult, RunState, utc_time
from . import _docker_engine as eng
from ._docker_build import ensure_image

if TYPE_CHECKING:
    import aiodocker

_CAPABILITIES = frozenset({"detached", "reattach", "cancel", "logs_follow", "commands", "timeout"})
_MIN_MEMORY = 6 * 1024**2  # the engine refuses smaller limits
_USER = re.compile(r"^[A-Za-z0-9_.-]+(?::[A-Za-z0-9_.-]+)?$")
_SCHEMES = ("unix://", "tcp://", "http://", "https://", "ssh://")
#: Container labels tether sets; user labels may not use the prefix.
LABEL_RUN_ID, LABEL_VERSION, LABEL_RUN_DIR = "tether.run_id", "tether.version", "tether.run_dir"


class DockerConfig(BackendConfig):
    """Run jobs in Docker containers (rompy's ``DockerConfig``), detached and resumable."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "type": "docker",
                    "image": "swan:latest",
                    "cpu": 4,
                    "memory": "2g",
                    "timeout": 10800,
                    "env_vars": {"SWAN_THREADS": "4"},
                    "volumes": ["/tmp:/scratch:ro"],
                },
                {
                    "type": "docker",
                    "dockerfile": "docker/Dockerfile",
                    "build_context": ".",
                    "build_args": {"BASE_IMAGE": "ubuntu:24.04"},
                    "executable": "/usr/local/bin/swan",
                    "cpu": 2,
                },
            ]
        }
    )

    type: Literal["docker"] = Field(
        "docker", description="Selects this backend in config files.", examples=["docker"]
    )
    image: str | None = Field(
        None,
        min_length=1,
        description="Image to run (give this or dockerfile, not both). It must be on the "
        "engine already unless pull is true.",
        examples=["swan:latest"],
    )
    build_context: Path | None = Field(
        None,
        description="Folder sent to the engine as the build context; default: the current "
        "folder. Must exist and hold the dockerfile. .dockerignore is honoured.",
        examples=["."],
    )
    dockerfile: Path | None = Field(
        None,
        description="Dockerfile to build the image from, relative to build_context (give "
        "this or image). The image is tagged by a hash of the context and rebuilt only "
        "when the context changes.",
        examples=["docker/Dockerfile"],
    )
    build_args: dict[str, str] = Field(
        default_factory=dict,
        description="Build-time variables (ARG) for the dockerfile build.",
        examples=[{"BASE_IMAGE": "ubuntu:24.04"}],
    )
    cpu: int | None = Field(
        None,
        ge=1,
        le=128,
        description="CPU cores a run may use (1-128), as a CPU quota; a job's "
        "resources.cpus wins. None: no limit.",
        examples=[4],
    )
    memory: str | None = Field(
        None,
        description='Memory limit: bytes, or a number with k, m, g or t ("512m", "2g"); '
        "a job's resources.memory wins. None: no limit.",
        examples=["2g"],
    )
    executable: str | None = Field(
        None,
        description="Command to run when the job gives none; None runs the image's own CMD.",
        examples=["/usr/local/bin/swan"],
    )
    mpiexec: str | None = Field(
        None,
        description="MPI launcher put in front of the command, e.g. 'mpiexec -n 4'; blank "
        "means none.",
        examples=["mpiexec -n 4"],
    )
    shell: bool = Field(
        True,
        description="Run a string command with /bin/sh -c inside the container; False "
        "splits it into argv. A list command is always argv.",
        examples=[True],
    )
    volumes: list[str] = Field(
        default_factory=list,
        description="Bind mounts 'host:container[:ro|rw]'; the host path must exist and the "
        "container path be absolute. Default mode: rw.",
        examples=[["/tmp:/scratch:ro"]],
    )
    user: str = Field(
        "root",
        description="User (name or uid, optionally ':group') the command runs as. The run "
        "folder belongs to the submitting user (mode 0700), so a non-root user must have "
        "that uid to write there; see docs/docker.md.",
        examples=["root", "1000:1000"],
    )
    remove_container: bool = Field(
        True,
        description="Remove each container once its exit code and logs are recorded; False "
        "keeps it for inspection (tether docker prune removes it later).",
        examples=[True],
    )
    network_mode: str = Field(
        "none",
        min_length=1,
        description="The container's network: 'none' (default, no network), 'bridge', "
        "'host' or a network name.",
        examples=["none"],
    )
    allow_host_access: bool = Field(
        False,
        description="Allow settings that hand the container the host: mounting '/' or the "
        "Docker socket (or a folder holding it), and network_mode 'host'. Off by default.",
        examples=[False],
    )
    pull: bool = Field(
        False,
        description="Pull the image when the engine does not have it; False makes a missing "
        "image an error that names it.",
        examples=[False],
    )
    init: bool = Field(
        True,
        description="Run the engine's init (tini) as PID 1: signals reach the command and "
        "zombies are reaped. Set False for images that bring their own init.",
        examples=[True],
    )
    cancel_grace: int = Field(
        10,
        ge=0,
        le=600,
        description="Seconds between TERM and KILL when a run is cancelled or times out.",
        examples=[10],
    )
    mount_point: str = Field(
        "/tether/run",
        description="Where the run folder appears inside the container; the command "
        "starts there unless the job or working_dir names a folder.",
        examples=["/tether/run"],
    )
    runs_dir: Path | None = Field(
        None,
        description="Folder for run folders on this machine; default $TETHER_HOME/runs "
        "(~/.local/state/tether/runs).",
        examples=["~/tether-runs"],
    )
    labels: dict[str, str] = Field(
        default_factory=dict,
        description="Extra container labels (not secrets: anyone with engine access reads "
        "them). Keys starting with 'tether.' are reserved.",
        examples=[{"project": "swan-hindcast"}],
    )
    docker_host: str | None = Field(
        None,
        description="Engine address (unix://, tcp://, https://, ssh://); default "
        "$DOCKER_HOST, else unix:///var/run/docker.sock.",
        examples=["unix:///var/run/docker.sock"],
    )

    capabilities: ClassVar[frozenset[str]] = _CAPABILITIES
    preference: ClassVar[int] = 30  # isolated, but needs an engine: after local
    cache_ignore: ClassVar[frozenset[str]] = frozenset(
        {
            "timeout",
            "runs_dir",
            "cancel_grace",
            "remove_container",
            "pull",
            "labels",
            "docker_host",
            "allow_host_access",
        }
    )

    @classmethod
    def availability(cls) -> Availability:
        """Usable when aiodocker is installed and the default engine answers a ping."""
        return eng.ping(None)

    @model_validator(mode="before")
    @classmethod
    def _default_context(cls, data: Any, info: ValidationInfo) -> Any:
        if (
            isinstance(data, dict)
            and data.get("dockerfile") is not None
            and data.get("build_context") is None
            and not (info.context or {}).get(FROM_RECORD)
        ):
            data = {**data, "build_context": Path.cwd()}
        return data

    @field_validator("mpiexec", "executable", mode="before")
    @classmethod
    def _blank_is_none(cls, value: Any) -> Any:
        """rompy writes ``mpiexec: ""`` for "no MPI": blank means not set."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("mpiexec")
    @classmethod
    def _mpiexec(cls, launcher: str | None) -> str | None:
        if launcher is not None:
            try:
                shlex.split(launcher)
            except ValueError as exc:
                raise ValueError(f"mpiexec {quote(launcher)} cannot be split: {exc}") from None
        return launcher

    @field_validator("build_context")
    @classmethod
    def _context(cls, path: Path | None, info: ValidationInfo) -> Path | None:
        if path is None or (info.context or {}).get(FROM_RECORD):
            return path
        path = path.expanduser()
        if not path.is_dir():
            what = "is not a directory" if path.exists() else "does not exist"
            raise ValueError(
                f"Build context {quote(str(path))} {what}: point build_context at the "
                "folder that holds the dockerfile"
            )
        return path.resolve()

    @field_validator("dockerfile")
    @classmethod
    def _dockerfile(cls, path: Path | None, info: ValidationInfo) -> Path | None:
        if path is None or (info.context or {}).get(FROM_RECORD):
            return path
        context = info.data.get("build_context")
        if context is None:  # the context itself was invalid: that error says it all
            return path
        _check_dockerfile(path, context)
        return path

    @field_validator("memory")
    @classmethod
    def _memory(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if parse_memory(value) < _MIN_MEMORY:
            raise ValueError(f"memory {quote(value)} is below Docker's minimum of 6m")
        return value.strip()

    @field_validator("volumes")
    @classmethod
    def _volumes(cls, volumes: list[str], info: ValidationInfo) -> list[str]:
        from_record = (info.context or {}).get(FROM_RECORD)
        return [_volume(spec, check_host=not from_record) for spec in volumes]

    @field_validator("user")
    @classmethod
    def _user(cls, user: str) -> str:
        if not _USER.match(user):
            raise ValueError(
                f"user {quote(user)} is not a user name or uid, optionally with ':group' "
                "(e.g. 'root', '1000:1000')"
            )
        return user

    @field_validator("mount_point")
    @classmethod
    def _mount_point(cls, path: str) -> str:
        if not path.startswith("/") or path.rstrip("/") == "" or ":" in path:
            raise ValueError(
                f"mount_point {quote(path)} must be an absolute container path other than '/'"
            )
        return path.rstrip("/")

    @field_validator("labels")
    @classmethod
    def _labels(cls, labels: dict[str, str]) -> dict[str, str]:
        reserved = sorted(key for key in labels if key.startswith("tether."))
        if reserved:
            raise ValueError(f"label {quote(reserved[0])} uses the reserved prefix 'tether.'")
        return labels

    @field_validator("docker_host")
    @classmethod
    def _docker_host(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(_SCHEMES):
            raise ValueError(
                f"docker_host {quote(url)} needs a scheme: unix://, tcp://, https:// or ssh://"
            )
        return url

    @model_validator(mode="after")
    def _no_host_access(self) -> DockerConfig:
        if self.allow_host_access:
            return self
        if self.network_mode == "host":
            raise ValueError(
                "network_mode 'host' gives the container the host's network: use 'none' or "
                "'bridge', or set allow_host_access: true"
            )
        for spec in self.volumes:
            host = spec.partition(":")[0]
            if _exposes_host(host):
                raise ValueError(
                    f"volumes {quote(spec)} mounts the host's '/' or the Docker socket (full "
                    "control of the host): mount a narrower folder, or set "
                    "allow_host_access: true"
                )
        return self

    @model_validator(mode="after")
    def _image_or_dockerfile(self) -> DockerConfig:
        if self.image is None and self.dockerfile is None:
            raise ValueError("Either 'image' or 'dockerfile' must be provided")
        if self.image is not None and self.dockerfile is not None:
            raise ValueError("Cannot specify both 'image' and 'dockerfile': give one of them")
        if self.image is not None and (self.build_context is not None or self.build_args):
            raise ValueError(
                "'build_context' and 'build_args' apply only with 'dockerfile': remove them "
                "or build from a dockerfile instead of 'image'"
            )
        return self

    def create(self) -> DockerBackend:
        """Return a :class:`DockerBackend` with these settings."""
        return DockerBackend(self)

    @classmethod
    def handle_class(cls) -> builtins.type[DockerRunHandle]:
        """Saved Docker runs load into :class:`DockerRunHandle`."""
        return DockerRunHandle


#: Host paths whose mount hands the container the host (the Docker socket).
_SOCKETS = ("/var/run/docker.sock", "/run/docker.sock")


def _exposes_host(host: str) -> bool:
    """Whether mounting host path ``host`` exposes '/' or the Docker socket."""
    path = Path(host).expanduser()
    candidates = {path.as_posix().rstrip("/") or "/"}
    with contextlib.suppress(OSError):
        candidates.add(str(path.resolve()))
    for candidate in candidates:
        if candidate == "/":
            return True
        for sock in _SOCKETS:
            real = str(Path(sock).resolve()) if Path(sock).exists() else sock
            for target in {sock, real}:
                if target == candidate or target.startswith(candidate.rstrip("/") + "/"):
                    return True
    return False


def _volume(spec: str, *, check_host: bool) -> str:
    """Check and normalise one 'host:container[:ro|rw]' mount."""
    if ":" not in spec:
        raise ValueError(
            f"Volume mount must contain ':' (host:container[:ro|rw]), got {quote(spec)}"
        )
    host, _, rest = spec.partition(":")
    container, _, mode = rest.partition(":")
    mode = mode or "rw"
    if mode not in ("ro", "rw"):
        raise ValueError(f"Volume {quote(spec)}: mode {quote(mode)} must be 'ro' or 'rw'")
    if not host or not container.startswith("/"):
        raise ValueError(
            f"Volume {quote(spec)}: give a host path and an absolute container path "
            "(host:container[:ro|rw])"
        )
    host_path = Path(host).expanduser()
    if check_host:
        if not host_path.exists():
            raise ValueError(
                f"Volume host path {quote(host)} does not exist: create it or fix the mount"
            )
        host_path = host_path.resolve()
    return f"{host_path}:{container}:{mode}"


def _check_dockerfile(dockerfile: Path, context: Path) -> None:
    path = dockerfile.expanduser()
    if path.is_absolute():
        raise ValueError(
            f"dockerfile {quote(str(dockerfile))} must be given relative to build_context "
            f"({context})"
        )
    full = (context / path).resolve()
    if not full.is_relative_to(context.resolve()):
        raise ValueError(
            f"dockerfile {quote(str(dockerfile))} lies outside build_context ({context})"
        )
    if not full.is_file():
        raise ValueError(
            f"dockerfile {quote(str(dockerfile))} not found in build context {context}: "
            "give its path relative to build_context"
        )


class DockerBackend(Backend[DockerConfig]):
    """Starts each job in its own container; see the module docstring."""

    capabilities: ClassVar[frozenset[str]] = _CAPABILITIES

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

    async def submit(self, job: Job) -> DockerRunHandle:
        """Create and start the job's container and return at once."""
        refuse_calls(job, "Docker")
        config = self.config
        command = self._command(job)
        if job.resources.gpus:
            raise ConfigError(
                f"Job {job.name!r} asks for GPUs, which the docker backend does not "
                "give yet: remove resources.gpus."
            )
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
        run_id = new_run_id(job.name)
        async with eng.engine(config.docker_host, submitting=True) as client:
            image = await self._image(client)
            run_dir = make_run_dir(
                (config.runs_dir or default_runs_dir()).expanduser().absolute(), run_id
            )
            container_id: str | None = None
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
                container_id = await self._create(client, spec, f"tether-{run_id}")
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
                )
                refused = await eng.start(client, container_id)
                if refused is not None:  # e.g. the command is not in the image
                    await handle._record_start_failure(client, refused)
                # Runs can be found and re-attached from the folder alone (tether ls).
                write_record(run_dir / "handle.json", handle.to_record(), sync=False)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    if container_id is not None:
                        await eng.remove(client, container_id, force=True)
                    shutil.rmtree(run_dir, ignore_errors=True)
                raise
        return handle

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
        from ..registry import load_handle

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
        info = await eng.inspect(client, self._container_id)
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
            async with eng.engine(self._docker.docker_host) as client:
                info = await eng.inspect(client, self._container_id)
                status = ((info or {}).get("State") or {}).get("Status")
                if status in ("exited", "dead"):
                    await self._record_end(client, info or {})
                elif status is not None and time.time() >= self._deadline:
                    await self._stop(client, "timeout")
                elif status == "created":
                    self._set_state(RunState.PENDING)
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

    async def _wait_done(self) -> RunResult:
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
        return self._result

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
        )


def _lines(text: str) -> list[str]:
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines
