"""Discovery of backends through the ``tether.backends`` entry-point group.

Built-in backends are registered in tether's own ``pyproject.toml`` and found the
same way as third-party ones. A plugin that fails to import is remembered with
its error and does not hide the others.
"""

from __future__ import annotations

import functools
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ._loading import format_validation, read_mapping
from .config import BackendConfig
from .errors import ConfigError, RecordError, UnknownBackendError
from .handle import RunHandle
from .job import Job

GROUP = "tether.backends"


@functools.cache
def _discover() -> tuple[dict[str, type[BackendConfig]], dict[str, str]]:
    found: dict[str, type[BackendConfig]] = {}
    broken: dict[str, str] = {}
    for ep in entry_points(group=GROUP):
        try:
            cls = ep.load()
        except Exception as exc:  # a broken plugin must not break the others
            broken[ep.name] = f"{type(exc).__name__}: {exc}"
            continue
        if not (isinstance(cls, type) and issubclass(cls, BackendConfig)):
            broken[ep.name] = f"{ep.value} is not a BackendConfig subclass"
            continue
        found.setdefault(ep.name, cls)
    return found, broken


def reload_plugins() -> None:
    """Forget discovered plugins, so ones installed since are found (tests, notebooks)."""
    _discover.cache_clear()


def backend_configs() -> dict[str, type[BackendConfig]]:
    """Every importable backend: registry name → config class."""
    return dict(_discover()[0])


def config_class(name: str) -> type[BackendConfig]:
    """The config class registered under ``name``."""
    configs, broken = _discover()
    if name in configs:
        return configs[name]
    if name in broken:
        raise UnknownBackendError(f"Backend {name!r} failed to load: {broken[name]}")
    known = ", ".join(sorted(configs)) or "none (is tether installed? pip install -e .)"
    raise UnknownBackendError(f"Unknown backend type {name!r}; known types: {known}.")


def config_from_dict(
    data: dict[str, Any], *, source: Path | None = None, lines: dict[Any, int] | None = None
) -> BackendConfig:
    """Validate a mapping with a ``type`` field into that backend's config class."""
    where = f"{source}: " if source else ""
    kind = data.get("type")
    if not isinstance(kind, str) or not kind:
        known = ", ".join(sorted(backend_configs()))
        raise ConfigError(f"{where}backend config needs a 'type' field (one of: {known}).")
    cls = config_class(kind)
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation(exc, source, lines or {})) from None


def load_config(path: str | Path) -> BackendConfig:
    """Read a YAML or JSON backend config file into the config class its ``type`` names."""
    path = Path(path)
    data, lines = read_mapping(path, "Backend config")
    return config_from_dict(data, source=path, lines=lines)


def load_job(path: str | Path) -> tuple[Job, BackendConfig | None]:
    """Read a job file; an optional ``backend:`` mapping in it gives its config."""
    path = Path(path)
    data, lines = read_mapping(path, "Job")
    backend = data.pop("backend", None)
    config = None
    if backend is not None:
        if not isinstance(backend, dict):
            raise ConfigError(f"{path}: 'backend' must be a mapping with a 'type' field.")
        try:
            config = config_class(str(backend.get("type"))).model_validate(backend)
        except ValidationError as exc:
            raise ConfigError(format_validation(exc, path, lines, ("backend",))) from None
        except UnknownBackendError as exc:
            raise ConfigError(f"{path}: backend: {exc}") from None
    base = path.parent
    try:
        job = Job.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation(exc, path, lines)) from None
    # Relative paths in a job file are relative to the file, not to the caller's cwd.
    update: dict[str, Any] = {"inputs": [p if p.is_absolute() else (base / p) for p in job.inputs]}
    if job.workdir is not None and not job.workdir.is_absolute():
        update["workdir"] = base / job.workdir
    return job.model_copy(update=update), config


def handle_from_record(record: dict[str, Any], *, source: Path | None = None) -> RunHandle:
    """Rebuild the right handle class from a checked record."""
    where = f"Handle file '{source}'" if source else "Handle record"
    cls = config_class(str(record["backend"]))
    try:
        config = cls.from_record(record["config"])
        job = Job.from_record(record["job"])
    except ValidationError as exc:
        detail = format_validation(exc, None, {}).replace("\n", "; ")
        raise RecordError(f"{where} holds invalid settings: {detail}") from None
    data = record["data"]
    if not isinstance(data, dict):
        raise RecordError(f"{where} is corrupt: 'data' is not a mapping.")
    try:
        return cls.handle_class()._from_record(str(record["run_id"]), job, config, data)
    except (KeyError, TypeError, ValueError) as exc:
        raise RecordError(f"{where} is corrupt: {type(exc).__name__}: {exc}") from None


async def load_handle(path: str | Path) -> RunHandle:
    """Rebuild the handle saved at ``path``, whichever backend made it.

    The handle is refreshed once, so its ``state`` is current; a run that can no
    longer be found comes back LOST, not as an error.
    """
    from .records import read_record

    handle = handle_from_record(read_record(Path(path)), source=Path(path))
    await handle.refresh()
    return handle
