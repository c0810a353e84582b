"""Checks of the arguments of tether's entry points: wrong types fail at the door,
with the argument's name, what was given and what is accepted."""

from __future__ import annotations

from typing import Any

from .backend import Backend
from .config import BackendConfig
from .errors import ArgumentTypeError, ConfigError, UnknownBackendError
from .job import Job


def given(value: object) -> str:
    """How a wrong value is shown in a message: its type, and the value when short."""
    text = repr(value)
    return f"{type(value).__name__} {text}" if len(text) <= 40 else type(value).__name__


def check_job(job: object, where: str) -> Job:
    """``job`` if it is a Job (or a Call), else an ArgumentTypeError."""
    if not isinstance(job, Job):
        raise ArgumentTypeError(
            f"{where}: job must be a tether.Job or tether.Call, not {given(job)}"
        )
    return job


def backend_argument(
    backend: object, where: str, *, name: str = "backend"
) -> Backend[Any] | BackendConfig | None:
    """A backend, a config, None, or a config made from a backend type name ("local")."""
    if backend is None or isinstance(backend, Backend | BackendConfig):
        return backend
    if isinstance(backend, str):
        from .registry import config_class

        try:
            return config_class(backend).model_validate({"type": backend})
        except UnknownBackendError as exc:
            raise UnknownBackendError(f"{where}: {name} {backend!r}: {exc}") from None
        except ValueError as exc:
            raise ConfigError(f"{where}: {name} {backend!r}: {exc}") from None
    raise ArgumentTypeError(
        f"{where}: {name} must be a Backend, a backend config or a backend type name "
        f"such as 'local', not {given(backend)}"
    )
