"""``DaskConfig``: the settings of runs on a Dask ``distributed`` scheduler."""

from __future__ import annotations

import builtins
import re
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from ..._loading import quote
from ...capabilities import Availability, missing_extra
from ...config import BackendConfig

if TYPE_CHECKING:
    from .backend import DaskBackend
    from .handle import DaskRunHandle

#: What runs on an external scheduler can do (what the contract suite checks).
CAPABILITIES = frozenset(
    {
        "detached",
        "reattach",
        "find",
        "cancel",
        "logs_follow",
        "commands",
        "calls",
        "timeout",
        "cluster",
    }
)
#: What the embedded cluster (``address=None``, the default) lacks: its runs are on
#: this machine and live only as long as the process that started them.
EMBEDDED_LACKS = frozenset({"detached", "reattach", "cluster"})

_ADDRESS = re.compile(r"^(tcp|tls|inproc|ucx|ws|wss)://[^\s/]+$")


def dask_availability() -> Availability:
    """Whether ``distributed`` is importable here (looked up, not imported)."""
    return missing_extra("dask", ["dask", "distributed"], "dask")


class DaskConfig(BackendConfig):
    """Run jobs as tasks on a Dask ``distributed`` scheduler, re-attached by run id.

    ``address=None`` starts an embedded ``LocalCluster`` owned by this process:
    its runs end with the process (like inline runs). With an external scheduler
    the runs are held by the scheduler and outlive their submitter.
    """

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"type": "dask", "address": "tcp://127.0.0.1:8786", "timeout": 7200},
                {
                    "type": "dask",
                    "n_workers": 4,
                    "threads_per_worker": 1,
                    "processes": True,
                    "call_mode": "thread",
                    "shell": True,
                },
                {
                    "type": "dask",
                    "address": "tcp://scheduler.example:8786",
                    "resources": {"GPU": 1},
                    "runs_dir": "/shared/tether-runs",
                },
                {
                    "type": "dask",
                    "address": "tls://scheduler.example:8786",
                    "tls_ca_file": "/etc/dask/ca.pem",
                    "tls_cert": "/etc/dask/client.pem",
                    "tls_key": "/etc/dask/client-key.pem",
                    "cancel_grace": 10.0,
                    "connect_timeout": 10.0,
                },
            ]
        }
    )

    type: Literal["dask"] = Field(
        "dask", description="Selects this backend in config files.", examples=["dask"]
    )
    address: str | None = Field(
        None,
        description="The scheduler's address (tcp://host:port). None: an embedded LocalCluster "
        "owned by this process, whose runs end with it.",
        examples=["tcp://127.0.0.1:8786"],
    )
    n_workers: int | None = Field(
        None,
        ge=1,
        le=512,
        description="Workers of the embedded cluster (address=None only); default: Dask's.",
        examples=[4],
    )
    threads_per_worker: int | None = Field(
        None,
        ge=1,
        le=512,
        description="Threads per worker of the embedded cluster (address=None only).",
        examples=[1],
    )
    processes: bool = Field(
        True,
        description="Embedded cluster workers in their own processes (True) or as threads "
        "of this one (address=None only).",
        examples=[True],
    )
    resources: dict[str, float] = Field(
        default_factory=dict,
        description="Dask worker resources every run asks for, e.g. {'GPU': 1}; only workers "
        "started with them (dask worker --resources GPU=1) run the jobs.",
        examples=[{"GPU": 1}],
    )
    call_mode: Literal["process", "thread"] = Field(
        "process",
        description="process: a Call runs in a child process of the worker, so cancel and "
        "timeouts stop it for real; thread: in the worker's thread (no process start), "
        "where cancel and timeouts can only abandon it and its prints are not captured.",
        examples=["process"],
    )
    shell: bool = Field(
        True,
        description="Run a string command with /bin/sh -c on the worker; False splits it into "
        "argv. A list command is always argv.",
        examples=[True],
    )
    runs_dir: Path | None = Field(
        None,
        description="Folder for run folders (stdout, stderr, staged inputs), on a file system "
        "the workers share; default $TETHER_HOME/runs (~/.local/state/tether/runs).",
        examples=["/shared/tether-runs"],
    )
    cancel_grace: float = Field(
        10.0,
        ge=0,
        le=600,
        description="Seconds between TERM and KILL when a run is cancelled or times out.",
        examples=[10.0],
    )
    tls_ca_file: Path | None = Field(
        None,
        description="CA certificate(s) (PEM) to check a tls:// scheduler by; with "
        "tls_cert and tls_key, every connection is encrypted.",
        examples=["/etc/dask/ca.pem"],
    )
    tls_cert: Path | None = Field(
        None,
        description="This client's certificate (PEM) for a tls:// scheduler.",
        examples=["/etc/dask/client.pem"],
    )
    tls_key: Path | None = Field(
        None,
        description="The private key (PEM) of tls_cert; its path is saved, never its content.",
        examples=["/etc/dask/client-key.pem"],
    )
    connect_timeout: float = Field(
        10.0,
        gt=0,
        le=600,
        description="Seconds to wait for the scheduler when connecting.",
        examples=[10.0],
    )

    capabilities: ClassVar[frozenset[str]] = CAPABILITIES
    preference: ClassVar[int] = 45  # a cluster of its own: after local, docker and slurm
    cache_ignore: ClassVar[frozenset[str]] = frozenset(
        {
            "timeout",
            "address",
            "n_workers",
            "threads_per_worker",
            "processes",
            "call_mode",
            "runs_dir",
            "cancel_grace",
            "connect_timeout",
            "tls_ca_file",
            "tls_cert",
            "tls_key",
        }
    )

    @classmethod
    def availability(cls) -> Availability:
        """Usable when the ``dask[distributed]`` extra is installed."""
        return dask_availability()

    @classmethod
    def detected_capabilities(cls) -> frozenset[str]:
        """What the default settings give here: an embedded cluster, whose runs are on
        this machine and end with the process (no ``detached``, ``reattach``, ``cluster``)."""
        return cls.capabilities - EMBEDDED_LACKS

    @field_validator("address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is None:
            return None
        text = value.strip()
        if "://" not in text:
            text = f"tcp://{text}"
        if not _ADDRESS.match(text):
            raise ValueError(
                f"address {quote(value)} is not a scheduler address: write "
                "'tcp://host:port' (e.g. 'tcp://127.0.0.1:8786'), or leave it out for an "
                "embedded cluster"
            )
        return text

    @field_validator("resources")
    @classmethod
    def _resources(cls, value: dict[str, float]) -> dict[str, float]:
        for name, amount in value.items():
            if not name.strip() or amount <= 0:
                raise ValueError(
                    f"resource {quote(name)}: {amount} is not a Dask worker resource: give a "
                    "name and a positive amount, e.g. {'GPU': 1}"
                )
        return value

    @property
    def uses_tls(self) -> bool:
        """Whether connections to the scheduler are TLS (a tls:// address)."""
        return self.address is not None and self.address.startswith("tls://")

    @model_validator(mode="after")
    def _tls(self) -> DaskConfig:
        files = {
            "tls_ca_file": self.tls_ca_file,
            "tls_cert": self.tls_cert,
            "tls_key": self.tls_key,
        }
        given = [name for name, path in files.items() if path is not None]
        if given and not self.uses_tls:
            raise ValueError(
                f"{', '.join(given)} are for a tls:// scheduler, but the address is "
                f"{quote(str(self.address))}: write it as 'tls://host:port', or drop them"
            )
        if self.uses_tls and len(given) != len(files):
            missing = ", ".join(name for name in files if name not in given)
            raise ValueError(
                f"a tls:// scheduler needs tls_ca_file, tls_cert and tls_key: give {missing}"
            )
        return self

    @model_validator(mode="after")
    def _embedded_only(self) -> DaskConfig:
        embedded = {"n_workers": self.n_workers, "threads_per_worker": self.threads_per_worker}
        given = [name for name, value in embedded.items() if value is not None]
        if self.address is not None and given:
            raise ValueError(
                f"{', '.join(given)} shape the embedded cluster, but address "
                f"{quote(self.address)} names an external scheduler: drop them, or drop address"
            )
        return self

    def create(self) -> DaskBackend:
        """Return a :class:`DaskBackend` with these settings."""
        from .backend import DaskBackend

        return DaskBackend(self)

    @classmethod
    def handle_class(cls) -> builtins.type[DaskRunHandle]:
        """Saved Dask runs load into :class:`DaskRunHandle`."""
        from .handle import DaskRunHandle

        return DaskRunHandle
