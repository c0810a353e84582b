"""``DockerConfig``: the settings of Docker runs, checked before anything starts."""

from __future__ import annotations

import builtins
import contextlib
import re
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import ConfigDict, Field, ValidationInfo, field_validator, model_validator

from ..._loading import quote
from ...capabilities import Availability
from ...config import FROM_RECORD, BackendConfig
from ...job import parse_memory
from . import _engine as eng

if TYPE_CHECKING:
    from .backend import DockerBackend
    from .handle import DockerRunHandle

CAPABILITIES = frozenset(
    {"detached", "reattach", "find", "cancel", "logs_follow", "commands", "timeout"}
)
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

    capabilities: ClassVar[frozenset[str]] = CAPABILITIES
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

    @model_validator(mode="before")
    @classmethod
    def _not_both(cls, data: Any) -> Any:
        # Before the fields: a missing Dockerfile must not hide this error.
        if isinstance(data, dict) and data.get("image") and data.get("dockerfile"):
            raise ValueError("Cannot specify both 'image' and 'dockerfile': give one of them")
        return data

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
        from .backend import DockerBackend

        return DockerBackend(self)

    @classmethod
    def handle_class(cls) -> builtins.type[DockerRunHandle]:
        """Saved Docker runs load into :class:`DockerRunHandle`."""
        from .handle import DockerRunHandle

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


#: Bind-mount options the engine accepts, by group: at most one of each group.
_MOUNT_OPTIONS = (
    ("ro", "rw"),
    ("z", "Z"),  # SELinux relabelling: shared, private
    ("shared", "rshared", "slave", "rslave", "private", "rprivate"),  # propagation
    ("consistent", "cached", "delegated"),  # accepted, a no-op on Linux
    ("nocopy",),
)
_VALID_OPTIONS = ", ".join(option for group in _MOUNT_OPTIONS for option in group)


def _mount_options(spec: str, text: str) -> str:
    """Check a mount's comma-separated options as the engine would; default ``rw``."""
    options = text.split(",") if text else []
    seen: dict[int, str] = {}
    for option in options:
        group = next((i for i, names in enumerate(_MOUNT_OPTIONS) if option in names), None)
        if group is None:
            raise ValueError(
                f"Volume {quote(spec)}: option {quote(option)} is not a mount option "
                f"(valid: {_VALID_OPTIONS})"
            )
        if group in seen:
            raise ValueError(
                f"Volume {quote(spec)}: options {quote(seen[group])} and {quote(option)} "
                "contradict each other: keep one"
            )
        seen[group] = option
    if 0 not in seen:
        options.insert(0, "rw")
    return ",".join(options)


def _volume(spec: str, *, check_host: bool) -> str:
    """Check and normalise one 'host:container[:options]' mount (options as in
    ``docker run -v``: ro|rw, z|Z, propagation, consistency, nocopy)."""
    if ":" not in spec:
        raise ValueError(
            f"Volume mount must contain ':' (host:container[:ro|rw]), got {quote(spec)}"
        )
    host, _, rest = spec.partition(":")
    container, _, mode = rest.partition(":")
    mode = _mount_options(spec, mode)
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
