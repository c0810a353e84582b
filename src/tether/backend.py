"""The backend contract: a stateless async factory of run handles."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar, Generic, TypeVar

import anyio
import anyio.to_thread

from .capabilities import Availability
from .config import BackendConfig
from .handle import RunHandle
from .job import Job

C = TypeVar("C", bound=BackendConfig)


class Backend(ABC, Generic[C]):
    """Takes jobs and returns run handles. Holds settings, never per-run state."""

    #: Feature names, e.g. ``detached``, ``reattach``, ``cancel``, ``logs_follow``.
    capabilities: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, config: C) -> None:
        self._config = config

    @property
    def config(self) -> C:
        """The settings this backend was created with."""
        return self._config

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._config!r})"

    @abstractmethod
    async def submit(self, job: Job) -> RunHandle:
        """Start ``job`` and return its handle at once; the run goes on unattended.

        Raises :class:`~tether.errors.ConfigError` for a job this backend cannot
        express and :class:`~tether.errors.SubmitError` when it cannot start it.
        A command that turns out not to exist is not an error here: its run ends
        FAILED with the reason in ``RunResult.error``.
        """

    async def submit_array(
        self, jobs: Sequence[Job], *, max_concurrency: int | None = None
    ) -> list[RunHandle]:
        """Submit many jobs at once and return their handles, in order.

        Backends with the ``arrays`` capability make one array job of them (at
        most ``max_concurrency`` running at once); this default submits them one
        by one. If a submit fails, the runs already submitted are cancelled.
        """
        handles: list[RunHandle] = []
        try:
            for job in jobs:
                handles.append(await self.submit(job))
        except BaseException:
            with anyio.CancelScope(shield=True):
                for handle in handles:
                    await handle.cancel()
            raise
        return handles

    async def find(self, job: Job, run_id: str) -> RunHandle | None:
        """The run that ``submit(job, run_id=run_id)`` started, or None if none started.

        A submitter that died between asking for a run and recording its handle (a
        pipeline killed mid-step) finds the run again instead of starting a second
        one. Backends with the ``find`` capability implement this and take a
        ``run_id`` keyword in ``submit``; the default cannot tell and says None.
        """
        return None

    async def cache_fields(self) -> dict[str, Any]:
        """What of this backend decides a run's result, for cache keys.

        The default is the config's :meth:`~BackendConfig.cache_fields`; a backend
        whose settings name something that can change under the same name (a Docker
        image tag) puts the thing's identity in instead.
        """
        return self._config.cache_fields()

    async def check(self) -> Availability:
        """Tell whether this backend is usable here and, if not, why not.

        The default asks the config class (:meth:`BackendConfig.availability`) in a
        worker thread; backends whose settings matter (an address, a socket) override it.
        """
        return await anyio.to_thread.run_sync(type(self._config).availability)
