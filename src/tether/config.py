"""The pydantic base every backend config extends, with rompy's common fields."""

from __future__ import annotations

import builtins
from abc import abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator

from ._loading import quote
from .capabilities import Availability
from .job import public_env, reveal, secret_keys

if TYPE_CHECKING:
    from .backend import Backend
    from .handle import RunHandle

#: Validation context that marks a config rebuilt from a saved record: folders that
#: existed at submit time may be gone since, and re-attaching must still work.
FROM_RECORD = "tether_from_record"


class BackendConfig(BaseModel):
    """Where and how runs execute. Subclasses add their backend's fields.

    ``type`` names the backend in files and in the registry; ``create()`` returns
    the backend. Unknown fields are errors, so a typo never goes unnoticed.
    """

    model_config = ConfigDict(extra="forbid", validate_default=True, frozen=True, defer_build=True)

    #: Names the backend in the registry; subclasses narrow it to a Literal.
    type: str
    timeout: int = Field(
        3600,
        ge=60,
        le=86400,
        description="Longest a run may take, in seconds (60-86400); it then ends TIMED_OUT.",
        examples=[3600],
    )
    env_vars: dict[str, str | SecretStr] = Field(
        default_factory=dict,
        description="Environment variables for every run; SecretStr values are never saved.",
        examples=[{"OMP_NUM_THREADS": "4"}],
    )
    working_dir: Path | None = Field(
        None,
        description="Folder runs execute in when the job names none; must exist.",
        examples=["/tmp"],
    )

    #: What the backend can do; the names are explained in ``tether.capabilities``.
    capabilities: ClassVar[frozenset[str]] = frozenset()
    #: Rank among usable backends that fit a job in ``recommended_backend``; lower wins.
    preference: ClassVar[int] = 50
    #: Fields that cannot change a run's result: left out of cache keys.
    cache_ignore: ClassVar[frozenset[str]] = frozenset({"timeout"})

    @classmethod
    def availability(cls) -> Availability:
        """Whether this kind of backend can be used on this machine, and if not, why.

        Checks what needs no settings (an installed extra, a tool on PATH, a service
        at its default address) and is quick; it may block briefly, so async code
        calls ``await backend.check()`` instead, which runs it in a thread.
        """
        return Availability(True)

    @classmethod
    def detected_capabilities(cls) -> frozenset[str]:
        """What this backend can do on this machine: ``capabilities``, less what the
        machine lacks (a cluster without GPUs). Asked only when availability is."""
        return cls.capabilities

    @field_validator("env_vars")
    @classmethod
    def _env_keys(cls, env: dict[str, str | SecretStr]) -> dict[str, str | SecretStr]:
        for key in env:
            if not key.strip():
                raise ValueError("environment variable names must be non-empty")
            if "=" in key or "\0" in key:
                raise ValueError(f"environment variable name {quote(key)} must not contain '='")
        return env

    @field_validator("working_dir")
    @classmethod
    def _working_dir(cls, path: Path | None, info: ValidationInfo) -> Path | None:
        if path is None or (info.context or {}).get(FROM_RECORD):
            return path
        path = path.expanduser()
        if not path.exists():
            raise ValueError(
                f"Working directory {quote(str(path))} does not exist: create it or set "
                "working_dir to an existing folder"
            )
        if not path.is_dir():
            raise ValueError(
                f"Working directory {quote(str(path))} is not a directory: point working_dir "
                "at a folder"
            )
        return path.resolve()

    @abstractmethod
    def create(self) -> Backend[Any]:
        """Return the backend these settings describe."""

    @classmethod
    @abstractmethod
    def handle_class(cls) -> builtins.type[RunHandle]:
        """The handle class that this backend's saved records load into."""

    def resolved_env(self) -> dict[str, str]:
        """``env_vars`` with secret values revealed, for handing to a process only."""
        return reveal(self.env_vars)

    def to_record(self) -> dict[str, Any]:
        """JSON-ready settings without secret values (their names are kept)."""
        data = self.model_dump(mode="json", exclude={"env_vars"})
        data["env_vars"] = public_env(self.env_vars)
        secret = secret_keys(self.env_vars)
        if secret:
            data["secret_env_vars"] = secret
        return data

    def cache_fields(self) -> dict[str, Any]:
        """The result-relevant settings (the record without ``cache_ignore``), for keys."""
        record = self.to_record()
        return {k: v for k, v in record.items() if k not in self.cache_ignore}

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> BackendConfig:
        """Rebuild settings saved by :meth:`to_record`, without re-checking folders."""
        clean = {k: v for k, v in data.items() if k != "secret_env_vars"}
        return cls.model_validate(clean, context={FROM_RECORD: True})
