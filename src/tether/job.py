"""What to run: jobs and the resources they ask for."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from ._loading import quote

_HMS = re.compile(r"^(?:(\d+)-)?(\d+):(\d{1,2}):(\d{1,2})$")


def parse_walltime(value: Any) -> float | None:
    """Seconds from a number or a Slurm-style "[D-]HH:MM:SS" string."""
    if value is None or isinstance(value, int | float):
        return None if value is None else float(value)
    if isinstance(value, str):
        text = value.strip()
        match = _HMS.match(text)
        if match:
            days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
            return float(((days * 24 + hours) * 60 + minutes) * 60 + seconds)
        try:
            return float(text)
        except ValueError:
            pass
    raise ValueError(f"walltime {quote(value)} is not seconds or 'HH:MM:SS'")


_MEMORY = re.compile(r"^(\d+)\s*([kmgt]?)b?$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_memory(value: str | int) -> int:
    """Bytes from "512m", "2g", "1024" (bytes) and the like, as Docker reads them.

    Raises:
        ValueError: for anything else, with the accepted forms in the message.
    """
    match = _MEMORY.match(str(value).strip())
    if match is None or isinstance(value, bool):
        raise ValueError(
            f"memory {quote(value)} is not a size: use a number of bytes or a number with "
            "k, m, g or t (e.g. '512m', '2g')"
        )
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


class Resources(BaseModel):
    """What a run needs; each backend honours what it can and ignores the rest."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    cpus: int | None = Field(None, ge=1, description="CPU cores.")
    memory: str | None = Field(
        None, description='Memory: bytes, or a number with k, m, g or t ("512m", "2g").'
    )
    gpus: int | None = Field(None, ge=0, description="GPUs.")
    walltime: float | None = Field(
        None,
        gt=0,
        description="Wall-clock limit in seconds (or 'HH:MM:SS'); tighter than the "
        "backend timeout when both are set.",
    )
    extras: dict[str, Any] = Field(default_factory=dict, description="Backend-specific extras.")

    @field_validator("memory", mode="before")
    @classmethod
    def _memory(cls, value: Any) -> str | None:
        if value is None:
            return None
        parse_memory(value)
        return str(value).strip()

    @field_validator("walltime", mode="before")
    @classmethod
    def _walltime(cls, value: Any) -> float | None:
        return parse_walltime(value)


class Job(BaseModel):
    """What to run: a command, its environment, input files and output globs."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    name: str = Field("job", min_length=1, description="Human name; also prefixes run ids.")
    command: str | list[str] | None = Field(
        None,
        description="argv list, or a string (run by the shell when the backend's shell=True). "
        "None uses the backend config's default command.",
    )
    env: dict[str, str | SecretStr] = Field(
        default_factory=dict,
        description="Extra environment variables; SecretStr values never reach saved records.",
    )
    workdir: Path | None = Field(
        None, description="Folder the command runs in; default: the run's own folder."
    )
    inputs: list[Path] = Field(
        default_factory=list, description="Files or folders copied into the run folder."
    )
    outputs: list[str] = Field(default_factory=list, description="Globs collected after the run.")
    resources: Resources = Field(default_factory=Resources)

    @field_validator("outputs")
    @classmethod
    def _relative_globs(cls, outputs: list[str]) -> list[str]:
        for pattern in outputs:
            if not pattern or Path(pattern).is_absolute() or ".." in Path(pattern).parts:
                raise ValueError(
                    f"output glob {quote(pattern)} must be a non-empty path relative to the "
                    "run's working folder, without '..': collect files inside the run folder"
                )
        return outputs

    @field_validator("env")
    @classmethod
    def _env_keys(cls, env: dict[str, str | SecretStr]) -> dict[str, str | SecretStr]:
        for key in env:
            if not key or "=" in key or "\0" in key:
                raise ValueError(
                    f"environment variable name {quote(key)} must be non-empty, without '='"
                )
        return env

    @field_validator("command")
    @classmethod
    def _command(cls, command: str | list[str] | None) -> str | list[str] | None:
        if isinstance(command, list) and not command:
            raise ValueError("command list must not be empty")
        if isinstance(command, str) and not command.strip():
            raise ValueError("command must not be blank")
        return command

    def resolved_env(self) -> dict[str, str]:
        """The environment with secret values revealed, for handing to a process only."""
        return reveal(self.env)

    def to_record(self) -> dict[str, Any]:
        """JSON-ready form without secret values (their names are kept)."""
        data = self.model_dump(mode="json", exclude={"env"})
        data["env"] = public_env(self.env)
        secret = secret_keys(self.env)
        if secret:
            data["secret_env"] = secret
        return data

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> Job:
        """Rebuild a job from :meth:`to_record` output (secret values stay unknown).

        A record with a ``target`` is a :class:`~tether.call.Call` (without its
        arguments, which never leave the run).
        """
        data = {k: v for k, v in data.items() if k != "secret_env"}
        if "target" in data and cls is Job:
            from .call import Call

            return Call.model_validate(data)
        return cls.model_validate(data)


def reveal(env: dict[str, str | SecretStr]) -> dict[str, str]:
    """Plain strings for every value, secrets included."""
    return {k: v.get_secret_value() if isinstance(v, SecretStr) else v for k, v in env.items()}


def public_env(env: dict[str, str | SecretStr]) -> dict[str, str]:
    """Only the non-secret variables."""
    return {k: v for k, v in env.items() if not isinstance(v, SecretStr)}


def secret_keys(env: dict[str, str | SecretStr]) -> list[str]:
    """Names of the secret variables, sorted."""
    return sorted(k for k, v in env.items() if isinstance(v, SecretStr))
