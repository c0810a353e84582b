"""Work that must finish whatever cancels its caller (``cancel()``, journaling, cleanup).

``anyio.CancelScope(shield=True)`` holds against anyio and trio cancellation, but not
against asyncio's own: ``task.cancel()`` or ``asyncio.wait_for(...)`` on the caller
throws ``CancelledError`` into the shielded code at its next ``await``. So under
asyncio the work runs in a task of its own, which the caller waits for to the end
however often it is cancelled, and the cancellation is re-raised afterwards.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

import anyio

T = TypeVar("T")
P = ParamSpec("P")


def _asyncio_task() -> asyncio.Task[Any] | None:
    """The running asyncio task, or None under trio (no asyncio loop runs)."""
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None


async def shielded(fn: Callable[[], Awaitable[T]]) -> T:
    """Run ``fn()`` to its end even if the caller is cancelled, then honour that cancel.

    Under asyncio a cancelled caller still waits for the work (which no cancel
    reaches) and then raises ``CancelledError``; under trio a shielded scope does it.
    """

    async def run() -> T:
        with anyio.CancelScope(shield=True):
            value = await fn()
        return value

    if _asyncio_task() is None:
        return await run()

    task = asyncio.ensure_future(run())
    cancelled: asyncio.CancelledError | None = None
    while True:
        try:
            result = await asyncio.shield(task)
            break
        except asyncio.CancelledError as exc:
            if task.done():
                if task.cancelled():
                    raise
                result = task.result()  # the work ended as the cancel came: keep it
                cancelled = exc
                break
            cancelled = exc  # the caller was cancelled: keep waiting for the work
    if cancelled is not None:
        raise cancelled
    return result


def shielded_method(
    method: Callable[P, Coroutine[Any, Any, T]],
) -> Callable[P, Coroutine[Any, Any, T]]:
    """Decorate an async method (such as ``cancel``) so that it always runs to its end."""

    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        return await shielded(lambda: method(*args, **kwargs))

    return wrapper
