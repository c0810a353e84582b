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
    """:func:`run` for synchronous code (starts and closes its own event loop)."""
    check_job(job, "run_sync()")
    backend = _backend(backend, "run_sync()")

    async def main() -> RunResult:
        return await run(job, backend, timeout=timeout)

    return anyio.run(main)
