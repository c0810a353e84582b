"""The async pipeline runner: a DAG of steps, resumable from its state file.

Each step waits for the steps it depends on, then goes through its stages:
``generate`` (fill in upstream values, stage upstream output files), ``run`` (one
run per member, at most ``max_concurrency`` runs in flight over the whole
pipeline) and ``postprocess``. With a state file every transition is journaled
(:mod:`.journal`); running the pipeline again with the same file skips steps that
finished, re-attaches to runs still going (through their saved handles, or by run
id when the submitter died before saving one) and runs only what never finished.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .._arguments import backend_argument, check_job
from ..backend import Backend
from ..config import BackendConfig
from ..errors import ConfigError, UnknownBackendError
from ..job import Job
from ..postprocess.base import (
    Postprocessor,
    get_postprocessor,
)
from ._execution import _Run
from .graph import check_graph
from .report import (
    PipelineEvent,
    PipelineResult,
)
from .step import Step

#: Runs in flight at once when ``max_concurrency`` is not given.
DEFAULT_CONCURRENCY = 64

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


class Pipeline:
    """A DAG of :class:`Step` objects, run with ``await pipeline.run()``.

    Args:
        steps: the steps; names must be unique, dependencies must name steps, and
            cycles are refused (the error names the cycle).
        name: names the pipeline (and its state file's owner).
        backend: where steps without their own backend run (default: local).
        state: the state file; with it, a second ``run()`` resumes the first.
    """

    def __init__(
        self,
        steps: Iterable[Step],
        *,
        name: str = "pipeline",
        backend: Backend[Any] | BackendConfig | str | None = None,
        state: str | Path | None = None,
    ) -> None:
        self.name = name
        self.backend = backend_argument(backend, f"pipeline {name!r}")
        self.state = None if state is None else Path(state)
        self._steps: dict[str, Step] = {}
        for step in steps:
            if not isinstance(step, Step):
                raise ConfigError(f"pipeline {name!r}: {step!r} is not a Step")
            if step.name in self._steps:
                raise ConfigError(f"pipeline {name!r} has two steps named {step.name!r}")
            self._steps[step.name] = step
        if not self._steps:
            raise ConfigError(f"pipeline {name!r} has no steps")
        self._order = check_graph(self._steps)
        for step in self._steps.values():
            if isinstance(step.processor, str):
                try:
                    get_postprocessor(step.processor)
                except ConfigError as exc:
                    raise ConfigError(f"step {step.name!r}: {exc}") from None
        self._subscribers: list[MemoryObjectSendStream[PipelineEvent]] = []
        self._active: _Run | None = None

    @property
    def steps(self) -> dict[str, Step]:
        """The steps by name, in a valid start order."""
        return {name: self._steps[name] for name in self._order}

    def events(self) -> MemoryObjectReceiveStream[PipelineEvent]:
        """Subscribe to the current run's events, or the next one's: an async iterator.

        It yields every step, stage, run and postprocess change as it happens
        and ends when the run ends. Subscribe before starting the run to see it all::

            with pipeline.events() as events:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(pipeline.run)
                    async for event in events:
                        print(event)
        """
        send, receive = anyio.create_memory_object_stream[PipelineEvent](math.inf)
        if self._active is not None:
            self._active.subscribers.append(send)
        else:
            self._subscribers.append(send)
        return receive

    async def run(
        self,
        *,
        max_concurrency: int | None = None,
        fail_fast: bool = True,
        state: str | Path | None = None,
        progress: bool | None = None,
    ) -> PipelineResult:
        """Run every step that has not finished yet; return the full report.

        Args:
            max_concurrency: most runs in flight at once, over all steps
                (default :data:`DEFAULT_CONCURRENCY`).
            fail_fast: on the first failed step, cancel the runs going and skip the
                steps not started; with False, only the dependants of a failed
                step are skipped and everything else runs.
            state: the state file (default: the pipeline's).
            progress: inside a Jupyter kernel, a live table of the steps updates
                in place while the pipeline runs (None, the default); False turns
                it off. Outside a kernel nothing is shown either way.

        Cancelling the awaiting task cancels the pipeline's runs, records them
        CANCELLED and re-raises; a later run with the state file picks up there.
        """
        subscribers, self._subscribers = self._subscribers, []
        if max_concurrency is not None and (
            isinstance(max_concurrency, bool)
            or not isinstance(max_concurrency, int)
            or max_concurrency < 1
        ):
            for send in subscribers:
                send.close()
            raise ConfigError(f"max_concurrency must be an int >= 1, not {max_concurrency!r}")
        path = Path(state) if state is not None else self.state
        try:
            runner = _Run(
                self, max_concurrency or DEFAULT_CONCURRENCY, fail_fast, path, subscribers, progress
            )
        except BaseException:
            for send in subscribers:
                send.close()
            raise
        self._active = runner
        try:
            return await runner.run()
        finally:
            self._active = None

    def run_sync(self, **options: Any) -> PipelineResult:
        """:meth:`run` for synchronous code, on the event loop of :mod:`tether.sync`: from a
        plain script, and also where a loop is running (a notebook cell without ``await``)."""
        from ..sync import call

        return call(self.run, **options)

    def __repr__(self) -> str:
        return f"Pipeline({self.name!r}, steps={list(self._order)})"


async def pipeline(
    job: Job,
    *,
    run_backend: Backend[Any] | BackendConfig | str | None = None,
    run_kwargs: Mapping[str, Any] | None = None,
    processor: str | Postprocessor = "noop",
    process_kwargs: Mapping[str, Any] | None = None,
    state: str | Path | None = None,
) -> PipelineResult:
    """Run ``job`` and postprocess it, as rompy's ``model_run.pipeline()`` does.

    ``run_backend`` is a backend, a config, or a backend type name whose config
    takes ``run_kwargs`` (``run_backend="docker", run_kwargs={"image": …}``).
    ``result["success"]``, ``result["run_success"]`` and
    ``result["postprocess_results"]`` answer as rompy's do.
    """
    check_job(job, "pipeline()")
    backend: Backend[Any] | BackendConfig | None
    if isinstance(run_backend, str):
        from ..registry import config_class

        try:
            kind = config_class(run_backend)
        except UnknownBackendError as exc:
            raise UnknownBackendError(f"pipeline(): run_backend {run_backend!r}: {exc}") from None
        try:
            backend = kind.model_validate({**dict(run_kwargs or {}), "type": run_backend})
        except ValueError as exc:
            what = "run_kwargs" if run_kwargs else "its default config"
            raise ConfigError(f"pipeline(): {what} for backend {run_backend!r}: {exc}") from None
    else:
        if run_kwargs:
            raise ConfigError("pipeline(): run_kwargs needs run_backend to be a backend type name")
        backend = backend_argument(run_backend, "pipeline()", name="run_backend")
    name = _UNSAFE.sub("-", job.name).strip("-.")[:64] or "run"
    step = Step(name, job, backend=backend, processor=processor, process_kwargs=process_kwargs)
    return await Pipeline([step], name=name, state=state).run()
