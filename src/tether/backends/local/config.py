"""LocalConfig: the settings of the local backend."""

from __future__ import annotations

import builtins
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import ConfigDict, Field, field_validator

from ..._gpus import detect_gpus
from ..._supervisor import supervisor_argv
from ...capabilities import Availability
from ...config import BackendConfig
from ...errors import BackendUnavailableError
from ...job import parse_memory
from ._common import _CAPABILITIES

if TYPE_CHECKING:
    from .backend import LocalBackend
    from .handle import LocalRunHandle


class LocalConfig(BackendConfig):
    """Run jobs as processes on this machine (rompy's ``LocalConfig``, detached)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "type": "local",
                    "timeout": 7200,
                    "env_vars": {"OMP_NUM_THREADS": "4", "MODEL_DEBUG": "true"},
                    "command": "python run_model.py --verbose",
                    "shell": True,
                    "capture_output": True,
                },
                {"type": "local", "command": ["python", "-m", "model", "--steps", "100"]},
            ]
        }
    )

    type: Literal["local"] = Field(
        "local", description="Selects this backend in config files.", examples=["local"]
    )
    command: str | list[str] | None = Field(
        None,
        description="Command to run when the job gives none.",
        examples=["python run_model.py --verbose"],
    )
    shell: bool = Field(
        True,
        description="Run a string command through /bin/sh; False splits it into argv "
        "(no shell). A list command is always argv.",
        examples=[True],
    )
    capture_output: bool = Field(
        True,
        description="Write stdout/stderr to files in the run folder; False lets them go "
        "to the submitting process's terminal (logs() then yields nothing).",
        examples=[True],
    )
    runs_dir: Path | None = Field(
        None,
        description="Folder for run folders; default $TETHER_HOME/runs "
        "(~/.local/state/tether/runs).",
        examples=["~/tether-runs"],
    )
    cancel_grace: float = Field(
        5.0,
        ge=0,
        le=600,
        description="Seconds between TERM and KILL when a run is cancelled or times out.",
        examples=[5.0],
    )

    # -- resource slots (see _slots and docs/local-backend.md) -----------------------
    cpus: int | None = Field(
        None,
        ge=1,
        description="CPU slots that runs asking resources.cpus share; default: the cores "
        "this process may use.",
        examples=[8],
    )
    memory: str | None = Field(
        None,
        description='Memory that runs asking resources.memory share ("16g"); default: '
        "this machine's RAM.",
        examples=["16g"],
    )
    gpus: list[int | str] | None = Field(
        None,
        description="GPU ids that runs asking resources.gpus share (what CUDA_VISIBLE_DEVICES "
        "takes); default: the GPUs detected (NVML, else nvidia-smi). [] offers none.",
        examples=[[0, 1]],
    )
    pin_cpus: bool = Field(
        False,
        description="Pin a run that asks resources.cpus to its own cores (sched_setaffinity).",
        examples=[True],
    )
    slots_dir: Path | None = Field(
        None,
        description="The per-user slots ledger shared by this machine's tether processes; "
        "default $TETHER_SLOTS_DIR, else $XDG_RUNTIME_DIR/tether-slots, else "
        "/tmp/tether-slots-<uid>. Must be on a local file system.",
        examples=["/run/user/1000/tether-slots"],
    )

    capabilities: ClassVar[frozenset[str]] = _CAPABILITIES
    preference: ClassVar[int] = 10  # this machine, detached and resumable: the default
    cache_ignore: ClassVar[frozenset[str]] = frozenset(
        {"timeout", "runs_dir", "cancel_grace", "cpus", "memory", "gpus", "pin_cpus", "slots_dir"}
    )

    @field_validator("memory", mode="before")
    @classmethod
    def _memory(cls, value: Any) -> str | None:
        if value is None:
            return None
        parse_memory(value)  # a clear error for "lots"
        return str(value).strip()

    @field_validator("gpus")
    @classmethod
    def _gpus(cls, gpus: list[int | str] | None) -> list[int | str] | None:
        if gpus is None:
            return None
        for gpu in gpus:
            text = str(gpu)
            if not text or not all(c.isalnum() or c in "-_:." for c in text):
                raise ValueError(
                    f"GPU id {text!r} is not a device index or UUID: list ids such as 0, 1 "
                    "or 'GPU-…' (what CUDA_VISIBLE_DEVICES takes)"
                )
        if len({str(gpu) for gpu in gpus}) != len(gpus):
            raise ValueError("gpus lists a device twice: list each GPU id once")
        return gpus

    @classmethod
    def detected_capabilities(cls) -> frozenset[str]:
        """``gpus`` only where GPUs are detected (a config's own ``gpus`` list aside)."""
        if detect_gpus():
            return cls.capabilities
        return cls.capabilities - {"gpus"}

    @classmethod
    def availability(cls) -> Availability:
        """Usable on Linux with pidfd support and a supervisor (native or Python)."""
        if not hasattr(os, "pidfd_open") or not Path("/proc/self/stat").exists():
            return Availability(False, "the local backend needs Linux (pidfd_open and /proc)")
        try:
            supervisor_argv()
        except BackendUnavailableError as exc:
            return Availability(False, str(exc))
        return Availability(True)

    def create(self) -> LocalBackend:
        """Return a :class:`LocalBackend` with these settings."""
        from .backend import LocalBackend

        return LocalBackend(self)

    @classmethod
    def handle_class(cls) -> builtins.type[LocalRunHandle]:
        """Saved local runs load into :class:`LocalRunHandle`."""
        from .handle import LocalRunHandle

        return LocalRunHandle
