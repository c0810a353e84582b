"""Connections to the scheduler, and the embedded clusters of this process.

Operations (submit, refresh, wait, cancel) share one asynchronous
``distributed.Client`` per scheduler and event loop, opened on first use and
closed a few seconds after the last operation, or when the loop shuts down: a
handle holds no connection of its own, and nothing outlives the event loop that
used it. ``distributed`` is asyncio-only; under another loop
(trio) :func:`connect` raises :class:`BackendUnavailableError` saying so.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
from collections.abc import AsyncIterator
from typing import Any

import anyio

from ...errors import BackendError, BackendUnavailableError
from .config import DaskConfig

#: Embedded LocalClusters of this process: settings → (event loop, cluster).
_EMBEDDED: dict[tuple[Any, ...], tuple[asyncio.AbstractEventLoop, Any]] = {}
#: Addresses of the embedded clusters this process started (and still runs).
EMBEDDED_ADDRESSES: set[str] = set()


def distributed(module: str = "") -> Any:
    """``distributed`` (or one of its modules), imported on first use; untyped."""
    return importlib.import_module(f"distributed{'.' if module else ''}{module}")


def require_asyncio(what: str = "The dask backend") -> asyncio.AbstractEventLoop:
    """The running asyncio loop; a clear error under trio (or outside any loop)."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        raise BackendUnavailableError(
            f"{what} runs under asyncio only (distributed's asynchronous Client): run it "
            "with asyncio (anyio.run(..., backend='asyncio')), not trio."
        ) from None


#: Seconds an idle client stays open for the next operation of the same loop.
LINGER = 5.0


class _Pooled:
    """One event loop's client of one scheduler, shared by the operations in flight."""

    def __init__(self, loop: asyncio.AbstractEventLoop, client: Any) -> None:
        self.loop = loop
        self.client = client
        self.users = 0
        self.closer: asyncio.Task[None] | None = None


#: Open clients by scheduler address (each usable only by the loop that made it).
_POOL: dict[str, _Pooled] = {}


def _security(config: DaskConfig) -> Any:
    """distributed's Security for the config's TLS files (None: plain TCP)."""
    if not config.uses_tls:
        return None
    return distributed().Security(
        tls_ca_file=str(config.tls_ca_file),
        tls_client_cert=str(config.tls_cert),
        tls_client_key=str(config.tls_key),
        require_encryption=True,
    )


async def _open(address: str, config: DaskConfig) -> Any:
    timeout = config.connect_timeout
    try:
        return await distributed().Client(
            address,
            asynchronous=True,
            timeout=timeout,
            set_as_default=False,
            security=_security(config),
        )
    except (OSError, TimeoutError) as exc:
        raise BackendError(
            f"Dask scheduler at {address} did not answer within {timeout:g}s ({exc}): start "
            "it (dask scheduler), or fix the config's address."
        ) from exc


def _usable(entry: _Pooled | None, loop: asyncio.AbstractEventLoop) -> bool:
    return entry is not None and entry.loop is loop and entry.client.status == "running"


async def _linger(entry: _Pooled, address: str) -> None:
    """Close an idle client after LINGER seconds, or when its loop shuts down."""
    try:
        await asyncio.sleep(LINGER)
    finally:
        # A new user cancels the closer after clearing it: then the client stays open.
        if entry.closer is asyncio.current_task() and entry.users == 0:
            entry.closer = None
            if _POOL.get(address) is entry:
                del _POOL[address]
            with anyio.CancelScope(shield=True):
                await entry.client.close()


@contextlib.asynccontextmanager
async def connect(address: str, config: DaskConfig) -> AsyncIterator[Any]:
    """An asynchronous Client of the scheduler at ``address`` (with the config's TLS
    files and connect timeout) for the block's duration.

    One client per scheduler and event loop serves every operation in flight and
    stays open ``LINGER`` seconds after the last, for the next one; it is closed
    then, or when its loop shuts down (asyncio cancels the lingering closer).

    Raises:
        BackendUnavailableError: not under asyncio.
        BackendError: the scheduler did not answer within ``connect_timeout`` seconds.
    """
    loop = require_asyncio()
    entry = _POOL.get(address)
    if not _usable(entry, loop):
        client = await _open(address, config)
        entry = _POOL.get(address)
        if _usable(entry, loop):  # another operation opened one meanwhile
            with anyio.CancelScope(shield=True):
                await client.close()
        else:
            entry = _POOL[address] = _Pooled(loop, client)
    assert entry is not None
    entry.users += 1
    if entry.closer is not None:
        closer, entry.closer = entry.closer, None
        closer.cancel()
    try:
        yield entry.client
    finally:
        entry.users -= 1
        if entry.users == 0 and _POOL.get(address) is entry:
            entry.closer = loop.create_task(_linger(entry, address))


async def embedded_address(config: DaskConfig) -> str:
    """The address of this process's embedded LocalCluster for ``config``, started once
    per event loop (a cluster started in another, closed loop is replaced)."""
    loop = require_asyncio()
    key = (config.n_workers, config.threads_per_worker, config.processes, os.getpid())
    found = _EMBEDDED.get(key)
    if found is not None and found[0] is loop and found[0].is_running():
        return str(found[1].scheduler_address)
    if found is not None:
        _forget(key)
    # The scheduler's HTTP server (health, and the dashboard if installed) on a free
    # loopback port: a fixed :8787 may be taken, and nothing listens beyond this host.
    options: dict[str, Any] = {"processes": config.processes, "dashboard_address": "127.0.0.1:0"}
    if config.processes:  # thread workers talk in-process (inproc://), never over TCP
        options["host"] = "127.0.0.1"
    if config.n_workers is not None:
        options["n_workers"] = config.n_workers
    if config.threads_per_worker is not None:
        options["threads_per_worker"] = config.threads_per_worker
    if config.resources:
        options["resources"] = config.resources
    cluster = await distributed().LocalCluster(asynchronous=True, **options)
    _EMBEDDED[key] = (loop, cluster)
    EMBEDDED_ADDRESSES.add(str(cluster.scheduler_address))
    return str(cluster.scheduler_address)


def _forget(key: tuple[Any, ...]) -> None:
    _, cluster = _EMBEDDED.pop(key)
    EMBEDDED_ADDRESSES.discard(str(cluster.scheduler_address))


async def close_embedded() -> None:
    """Close the embedded clusters this event loop started (their runs end with them).

    Call it before the loop ends (a notebook's kernel, a script's ``main``); clusters
    of other loops are left for their own loop to close.
    """
    loop = require_asyncio()
    for key, (owner, cluster) in list(_EMBEDDED.items()):
        if owner is loop:
            _forget(key)
            with anyio.CancelScope(shield=True):
                entry = _POOL.pop(str(cluster.scheduler_address), None)
                if entry is not None and entry.loop is loop:
                    if entry.closer is not None:
                        closer, entry.closer = entry.closer, None
                        closer.cancel()
                    await entry.client.close()
                await cluster.close()


async def close_clients() -> None:
    """Close the idle clients this event loop keeps open for its next operation (they
    close by themselves ``LINGER`` seconds after their last one): before shutting a
    scheduler down from the same process, so that no client tries to reconnect."""
    loop = require_asyncio()
    for address, entry in list(_POOL.items()):
        if entry.loop is loop and entry.users == 0:
            del _POOL[address]
            if entry.closer is not None:
                closer, entry.closer = entry.closer, None
                closer.cancel()
            with anyio.CancelScope(shield=True):
                await entry.client.close()


def translate(exc: Exception, address: str) -> BackendError:
    """A scheduler's refusal as tether's error, naming the scheduler."""
    return BackendError(f"Dask scheduler at {address}: {type(exc).__name__}: {exc}")
