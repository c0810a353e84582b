"""One-call conveniences for scripts and notebooks."""

from __future__ import annotations

from typing import Any

import anyio

from ._arguments import backend_argument, check_job
from .backend import Backend
from .config import BackendConfig
from .job import Job
from .result import RunResult


def _backend(backend: Backend[Any] | BackendConfig | str | None, where: str) -> Backend[Any]:
    backend = backend_argument(backend, where)
    if backend is None:
        from .backends.local import LocalConfig

        return LocalConfig().create()
    if isinstance(backend, BackendConfig):
        return backend.create()
    return backend


async def run(
    job: Job,
    backend: Backend[Any] | BackendConfig | str | None = None,
    *,
    timeout: float | None = None,
) -> RunResult:
    """Submit ``job`` and wait for its result (local backend by default).

    ``backend`` is a backend, a config, or a backend type name such as ``"local"``.

    ``timeout`` bounds the wait only (a :class:`~tether.errors.WaitTimeout` leaves the
    run going); the run's own limit is the backend's ``timeout``. If the awaiting
    task is cancelled, the run is cancelled too: ``run`` owns the run it starts.
    """
    handle = await _backend(backend, "run()").submit(check_job(job, "run()"))
    try:
        return await handle.wait(timeout)
    except anyio.get_cancelled_exc_class():
        await handle.cancel()
        raise


def run_sync(
    job: Job,
    backend: Backend[Any] | BackendConfig | str | None = None,
    *,
    timeout: float | None = None,
) -> RunResult:
    """:func:`run` for synchronous code: :func:`tether.sync.run` under its older name.

    Runs on the synchronous facade's event-loop thread, so it also works where an
    event loop is running already (a notebook cell without ``await``).
    """
    from .sync import _run

    return _run(job, backend, timeout, "run_sync()")
