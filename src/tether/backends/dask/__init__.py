"""Dask ``distributed`` runs: tasks held by the scheduler, re-attached by run id.

Each run is one Dask task whose key is the run id (never ``pure=True``: two
submissions of the same job are two runs). The submitter publishes the task's
future as a dataset named by the run id, so the scheduler, not the client's
reference, keeps the run: it goes on when the submitting process dies, and any
process re-attaches with ``load_handle`` by connecting to the saved address.
The outcome stays on the scheduler until ``await handle.forget()``, or
``DaskBackend.prune()`` (``tether dask prune``) releases it, or the scheduler
restarts (the run is then LOST, with the reason).

On the worker the task runs the job under tether's run supervisor (a ``Call``
by tether's worker module, unless ``call_mode="thread"``), which enforces the
run's timeout, and watches the run's cancel event, so cancels and timeouts
really stop the work and everything it started, with nobody attached (see
``_task``).

The run folder (``runs_dir``) holds the run's stdout and stderr, written by the
worker: it must be on a file system the workers share with the submitter, as
for Slurm. With ``address=None`` the runs are on an embedded ``LocalCluster``
owned by this process and live only as long as it does (like inline runs);
``close_embedded()`` shuts it down.

Dask's asynchronous client is asyncio-only, and so is this backend: under trio
its calls raise :class:`~tether.errors.BackendUnavailableError`. distributed is
imported on first use, never by ``import tether``.
"""

from __future__ import annotations

from ._client import close_clients, close_embedded
from ._prune import PrunedRun
from .backend import DaskBackend
from .config import DaskConfig
from .handle import DaskRunHandle

__all__ = [
    "DaskBackend",
    "DaskConfig",
    "DaskRunHandle",
    "PrunedRun",
    "close_clients",
    "close_embedded",
]
