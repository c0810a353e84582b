"""The backend each step runs on: its own or the pipeline's, cached and retried as asked."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from ..backend import Backend
from ..config import BackendConfig
from ..errors import ConfigError
from ..handle import RunHandle
from ..job import Job
from .step import Step, encode_fields

if TYPE_CHECKING:
    from .runner import Pipeline


class StepBackends:
    """Builds each step's backend once, shared by steps with the same settings."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self._made: dict[Any, Backend[Any]] = {}
        #: id(backend) → its encoded cache fields (the backends live as long as this).
        self._fields: dict[int, str] = {}

    def backend_of(self, step: Step) -> Backend[Any]:
        """The step's backend: wrapped in the cache and in retries when the step asks."""
        chosen = step.backend or self.pipeline.backend
        if chosen is None:
            from ..backends.local import LocalConfig

            chosen = LocalConfig()
        cache = step.cache
        memo: tuple[int, Any]
        if step.retry is None and isinstance(cache, bool):
            memo = (id(chosen), cache)  # the common case, without encoding anything
        else:
            retry = None if step.retry is None else step.retry.model_dump(mode="json")
            memo = (id(chosen), json.dumps([cache, retry], sort_keys=True, default=str))
        made = self._made.get(memo)
        if made is not None:
            return made
        if cache is not False:
            from ..cache.backend import CachedConfig

            inner = chosen if isinstance(chosen, BackendConfig) else chosen.config
            options = cache if isinstance(cache, dict) else {}
            try:
                chosen = CachedConfig(backend=inner, **options)
            except ValueError as exc:
                raise ConfigError(f"step {step.name!r}: invalid cache options: {exc}") from None
        backend = chosen.create() if isinstance(chosen, BackendConfig) else chosen
        if step.retry is not None:  # outside the cache: each attempt is a cache submission
            from ..retry.backend import RetryingBackend

            try:
                backend = RetryingBackend(backend, step.retry)
            except ConfigError as exc:
                raise ConfigError(f"step {step.name!r}: {exc}") from None
        self._made[memo] = backend
        return backend

    def cache_fields(self, backend: Backend[Any]) -> str:
        """The backend's result-relevant settings, encoded for step digests once per backend."""
        fields = self._fields.get(id(backend))
        if fields is None:
            fields = encode_fields(backend.config.cache_fields())
            self._fields[id(backend)] = fields
        return fields


async def submit(backend: Backend[Any], job: Job, run_id: str) -> RunHandle:
    """Submit under the run id journaled first, on backends that can find a run by it."""
    if "find" in backend.capabilities:
        return await backend.submit(job, run_id=run_id)  # type: ignore[call-arg]
    return await backend.submit(job)
