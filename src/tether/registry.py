"""Backends by name: config classes from the ``tether.backends`` entry points,
config and job files read into them, and saved handles rebuilt through them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from . import _plugins
from ._interpolate import UnresolvedReference, resolve
from ._loading import Loc, field_path, find_line, format_validation, quote, read_mapping
from .config import BackendConfig
from .errors import ConfigError, RecordError, UnknownBackendError
from .handle import RunHandle
from .job import Job


def _not_a_config(obj: object) -> str | None:
    if isinstance(obj, type) and issubclass(obj, BackendConfig):
        return None
    return "is not a BackendConfig subclass"


_plugins.register_check(_plugins.BACKENDS, _not_a_config)


def reload_plugins() -> None:
    """Forget discovered plugins, so ones installed since are found (tests, notebooks)."""
    _plugins.reload()


def backend_configs() -> dict[str, type[BackendConfig]]:
    """Every importable backend: registry name → config class."""
    return dict(_plugins.discover(_plugins.BACKENDS).found)


def broken_backends() -> dict[str, str]:
    """Backends whose plugin failed to load: name → reason."""
    return dict(_plugins.discover(_plugins.BACKENDS).broken)


def config_class(name: str) -> type[BackendConfig]:
    """The config class registered under ``name``; only that backend is imported."""
    plugin = _plugins.find(_plugins.BACKENDS, name)
    if plugin is not None and plugin.broken is None:
        cls: type[BackendConfig] = plugin.obj
        return cls
    if plugin is not None:
        raise UnknownBackendError(f"Backend {quote(name)} failed to load: {plugin.broken}")
    # Only now every backend is loaded, to name the known ones.
    plugins = _plugins.discover(_plugins.BACKENDS)
    known = ", ".join(sorted(plugins.found)) or "none (is tether installed? pip install -e .)"
    raise UnknownBackendError(f"Unknown backend type {quote(name)}; known types: {known}.")


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
        raise ConfigError(format_validation(exc, source, lines or {}, data=data)) from None


def _resolved(
    data: dict[str, Any], path: Path, lines: dict[Loc, int], secret_maps: tuple[Loc, ...]
) -> dict[str, Any]:
    """``data`` with its ``${VAR}`` references resolved; errors name file, line and field."""
    try:
        resolved: dict[str, Any] = resolve(data, secret_maps=secret_maps)
    except UnresolvedReference as exc:
        field = field_path(exc.loc)
        line = find_line(lines, exc.loc)
        where = f"{path}:{line}" if line else str(path)
        raise ConfigError(f"{where}: {field}: {exc}") from None
    return resolved


def load_config(path: str | Path, *, backend_type: str | None = None) -> BackendConfig:
    """Read a YAML or JSON backend config file into the config class its ``type`` names.

    ``${VAR}`` and ``${VAR:-default}`` references are resolved from the environment
    now; ``env_vars`` values that use one are secrets (see ``tether._interpolate``).

    Args:
        path: the file (``.json`` is read as JSON, anything else as YAML).
        backend_type: the type the file must have; it also stands in for a
            missing ``type`` field (as in ``rompy backends validate --backend-type``).
    """
    path = Path(path)
    data, lines = read_mapping(path, "Backend config")
    # A cached config holds its inner backend's env_vars one level down.
    data = _resolved(data, path, lines, (("env_vars",), ("backend", "env_vars")))
    if backend_type is not None:
        given = data.get("type")
        if given is None:
            config_class(backend_type)  # an unknown type fails here, naming the known ones
            data["type"] = backend_type
        elif given != backend_type:
            line = lines.get(("type",))
            where = f"{path}:{line}" if line else str(path)
            raise ConfigError(
                f"{where}: type: the file is a {quote(given)} config, not {backend_type!r}: "
                "fix the type field or the --backend-type option"
            )
    return config_from_dict(data, source=path, lines=lines)


def load_job(path: str | Path) -> tuple[Job, BackendConfig | None]:
    """Read a job file; an optional ``backend:`` mapping in it gives its config.

    References are resolved as in :func:`load_config`; ``env`` values that use one
    are secrets.
    """
    path = Path(path)
    data, lines = read_mapping(path, "Job")
    data = _resolved(
        data, path, lines, (("env",), ("backend", "env_vars"), ("backend", "backend", "env_vars"))
    )
    backend = data.pop("backend", None)
    config = None
    if backend is not None:
        if not isinstance(backend, dict):
            raise ConfigError(f"{path}: 'backend' must be a mapping with a 'type' field.")
        try:
            config = config_class(str(backend.get("type"))).model_validate(backend)
        except ValidationError as exc:
            raise ConfigError(
                format_validation(exc, path, lines, ("backend",), data=backend)
            ) from None
        except UnknownBackendError as exc:
            raise ConfigError(f"{path}: backend: {exc}") from None
    base = path.parent
    try:
        job = Job.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation(exc, path, lines, data=data)) from None
    # Relative paths in a job file are relative to the file, not to the caller's cwd.
    update: dict[str, Any] = {"inputs": [p if p.is_absolute() else (base / p) for p in job.inputs]}
    if job.workdir is not None and not job.workdir.is_absolute():
        update["workdir"] = base / job.workdir
    return job.model_copy(update=update), config


def handle_from_record(record: dict[str, Any], *, source: Path | None = None) -> RunHandle:
    """Rebuild the right handle class from a checked record."""
    where = f"Handle file '{source}'" if source else "Handle record"
    for key in ("job", "config", "data"):
        if not isinstance(record.get(key), dict):
            raise RecordError(f"{where} is corrupt: '{key}' is not a mapping.")
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
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as exc:
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
