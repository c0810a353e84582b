"""Pipelines written in YAML (or JSON), for ``tether pipeline run FILE``.

A file gives the pipeline's name, state file, concurrency, a default backend and
its steps; each step has a ``job`` (as in job files), or a ``call`` (a function
by ``"pkg.module:function"`` name, with ``args``/``kwargs``), or only a
``processor``. Errors name the file, line and field. Relative paths (the state
file, job inputs and workdirs) are relative to the file; ``${VAR}`` references
are read from the environment, and ``env`` values that use one are secrets.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .._loading import Loc, find_line, format_validation, read_mapping
from ..call import Call
from ..config import BackendConfig
from ..errors import ConfigError, UnknownBackendError
from ..job import Job
from ..registry import _resolved, config_class
from .runner import Pipeline
from .step import Step


class CallSpec(BaseModel):
    """A Python function to call, by name."""

    model_config = ConfigDict(extra="forbid")

    target: str = Field(description="'pkg.module:function', imported where the call runs.")
    args: list[Any] = Field(default_factory=list, description="Positional arguments.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments.")


class EnsembleSpec(BaseModel):
    """Fan a call out to ``n`` members with seeds spawned from ``seed``."""

    model_config = ConfigDict(extra="forbid")

    n: int = Field(ge=1, description="Number of members.")
    seed: int = Field(ge=0, description="Root seed (fixed, so a resumed pipeline agrees).")
    seed_as: Literal["sequence", "int"] = "sequence"


class StepSpec(BaseModel):
    """One step of a pipeline file."""

    model_config = ConfigDict(extra="forbid")

    name: str
    job: dict[str, Any] | None = Field(
        None, description="A job, as in job files (with a call: only its settings)."
    )
    call: CallSpec | None = None
    ensemble: EnsembleSpec | None = None
    backend: dict[str, Any] | None = Field(None, description="Backend config (with a 'type').")
    cache: bool | dict[str, Any] = Field(False, description="Cache the step's runs.")
    retry: int | dict[str, Any] | None = Field(
        None, description="Retry policy (its options), or a number of retries."
    )
    depends_on: list[str] = Field(default_factory=list)
    inputs_from: list[str] = Field(default_factory=list)
    over: list[dict[str, Any]] | dict[str, list[Any]] | None = None
    processor: str | None = None
    process_kwargs: dict[str, Any] = Field(default_factory=dict)


class PipelineSpec(BaseModel):
    """A pipeline file."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    state: Path | None = None
    max_concurrency: int | None = Field(None, ge=1)
    fail_fast: bool = True
    backend: dict[str, Any] | None = None
    steps: list[StepSpec] = Field(min_length=1)


@dataclass
class PipelineFile:
    """A pipeline read from a file, with the run options the file gives."""

    pipeline: Pipeline
    state: Path
    max_concurrency: int | None
    fail_fast: bool


def load_pipeline(path: str | Path) -> PipelineFile:
    """Read and check a pipeline file; every problem is a one-line ConfigError."""
    path = Path(path)
    data, lines = read_mapping(path, "Pipeline")
    secret: list[Loc] = [("backend", "env_vars")]
    steps = data.get("steps")
    if isinstance(steps, list):
        for index in range(len(steps)):
            secret += [("steps", index, "job", "env"), ("steps", index, "backend", "env_vars")]
    data = _resolved(data, path, lines, tuple(secret))
    try:
        spec = PipelineSpec.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation(exc, path, lines, data=data)) from None
    base = path.parent
    default = _backend(spec.backend, path, lines, ("backend",)) if spec.backend else None
    built = [_step(step, index, path, lines, base) for index, step in enumerate(spec.steps)]
    try:
        pipeline = Pipeline(built, name=spec.name or path.stem, backend=default)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    # A 'state' in the file is relative to the file's folder; the default sits beside it.
    state = spec.state if spec.state is not None else Path(f"{path.stem}.state.jsonl")
    return PipelineFile(
        pipeline=pipeline,
        state=state if state.is_absolute() else base / state,
        max_concurrency=spec.max_concurrency,
        fail_fast=spec.fail_fast,
    )


def _where(path: Path, lines: dict[Loc, int], loc: Loc) -> str:
    line = find_line(lines, loc)
    return f"{path}:{line}" if line else str(path)


def _backend(data: dict[str, Any], path: Path, lines: dict[Loc, int], loc: Loc) -> BackendConfig:
    try:
        return config_class(str(data.get("type"))).model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation(exc, path, lines, loc, data=data)) from None
    except UnknownBackendError as exc:
        raise ConfigError(f"{_where(path, lines, (*loc, 'type'))}: {exc}") from None


def _job(data: dict[str, Any], path: Path, lines: dict[Loc, int], loc: Loc, base: Path) -> Job:
    try:
        job = Job.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation(exc, path, lines, loc, data=data)) from None
    update: dict[str, Any] = {"inputs": [p if p.is_absolute() else base / p for p in job.inputs]}
    if job.workdir is not None and not job.workdir.is_absolute():
        update["workdir"] = base / job.workdir
    return job.model_copy(update=update)


def _step(spec: StepSpec, index: int, path: Path, lines: dict[Loc, int], base: Path) -> Step:
    loc: Loc = ("steps", index)
    where = f"{_where(path, lines, loc)}: steps.{index} ({spec.name})"
    job: Job | None = None
    if spec.job is not None:
        job = _job(spec.job, path, lines, (*loc, "job"), base)
    if spec.call is not None:
        if job is not None and job.command is not None:
            raise ConfigError(f"{where}: give a job command or a call, not both")
        try:
            call = Call(spec.call.target, *spec.call.args, **spec.call.kwargs)
            if job is not None:
                settings = job.model_dump(exclude={"command"}, exclude_unset=True)
                call = call.options(**settings)
        except (ConfigError, ValueError) as exc:
            raise ConfigError(f"{where}: call: {exc}") from None
        job = call
    backend = _backend(spec.backend, path, lines, (*loc, "backend")) if spec.backend else None
    options: dict[str, Any] = {
        "backend": backend,
        "cache": spec.cache,
        "retry": spec.retry,
        "depends_on": spec.depends_on,
        "inputs_from": spec.inputs_from,
        "processor": spec.processor,
        "process_kwargs": spec.process_kwargs,
    }
    try:
        if spec.ensemble is not None:
            if spec.call is None or spec.over is not None:
                raise ConfigError("an ensemble fans out a call: give 'call' and drop 'over'")
            assert isinstance(job, Call)
            return Step.ensemble(
                spec.name,
                spec.call.target,
                spec.ensemble.n,
                spec.ensemble.seed,
                args=spec.call.args,
                kwargs=spec.call.kwargs,
                seed_as=spec.ensemble.seed_as,
                **options,
            )
        return Step(spec.name, job, over=spec.over, **options)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
