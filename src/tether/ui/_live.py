"""Live updates: server-sent event streams the pages listen to.

Two kinds of event, both JSON: ``fragment`` ``{"id", "html"}`` replaces the inside of
the element with that id; ``lines`` ``{"id", "lines"}`` appends log lines to it. An
``end`` event tells the page the stream is complete (a finished run's logs), so it
stops reconnecting.

A stream is its own small ASGI response rather than a generator: its producers
write to the socket from a task group that a client's disconnect cancels, so no
async generator is ever left suspended in another task.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from .._html import esc
from ..handle import RunHandle, Stream

#: (event name, JSON-ready data) → sent to the page.
Emit = Callable[[str, Any], Awaitable[None]]
Producer = Callable[[Emit], Awaitable[None]]

#: A comment line this often keeps proxies and idle browsers from closing the stream.
HEARTBEAT = 15.0
#: Log lines sent in one event at most; a longer backlog is cut to its last lines.
MAX_BATCH = 5000


def encode(event: str, data: Any) -> bytes:
    """One server-sent event (the data on one line: JSON never holds a raw newline)."""
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


class EventStream(Response):
    """A ``text/event-stream`` response fed by ``producer`` until it returns or the
    client goes away."""

    media_type = "text/event-stream"

    def __init__(self, producer: Producer) -> None:
        # Not Response.__init__: it would declare a Content-Length for an empty body.
        self.status_code = 200
        self.background = None
        self.body = b""
        self.raw_headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"x-accel-buffering", b"no"),
        ]
        self._producer = producer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        lock = anyio.Lock()
        gone = False

        async def emit(event: str, data: Any) -> None:
            await write(encode(event, data))

        async def write(body: bytes) -> None:
            nonlocal gone
            async with lock:
                try:
                    await send({"type": "http.response.body", "body": body, "more_body": True})
                except OSError:  # the client went away mid-write
                    gone = True
                    tg.cancel_scope.cancel()

        async def watch_disconnect() -> None:
            nonlocal gone
            while (await receive())["type"] != "http.disconnect":
                pass
            gone = True
            tg.cancel_scope.cancel()

        async def heartbeat() -> None:
            while True:
                await anyio.sleep(HEARTBEAT)
                await write(b": heartbeat\n\n")

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch_disconnect)
            tg.start_soon(heartbeat)
            await self._producer(emit)
            tg.cancel_scope.cancel()
        if not gone:
            await send({"type": "http.response.body", "body": b"", "more_body": False})


async def every(
    interval: float, render: Callable[[], Awaitable[dict[str, str]]], emit: Emit
) -> None:
    """Re-render fragments every ``interval`` seconds; send the ones that changed.

    ``render`` returns element id → HTML. Runs until the stream is cancelled.
    """
    last: dict[str, str] = {}
    while True:
        for element, html in (await render()).items():
            if last.get(element) != html:
                await emit("fragment", {"id": element, "html": html})
                last[element] = html
        await anyio.sleep(interval)


async def follow_logs(handle: RunHandle, stream: Stream, emit: Emit) -> None:
    """Send a run's ``stream`` lines as they come, in batches, until the run has ended
    and everything was read."""
    pending: list[str] = []
    arrived = anyio.Event()
    done = False

    async def read() -> None:
        nonlocal arrived, done
        try:
            async for line in handle.logs(stream, follow=True):
                pending.append(line.rstrip("\r"))
                arrived.set()
        except Exception as exc:  # a backend that cannot give its logs: say so, go on
            pending.append(f"[tether ui: cannot read {stream}: {type(exc).__name__}: {exc}]")
        done = True
        arrived.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(read)
        while True:
            await arrived.wait()
            arrived = anyio.Event()
            await anyio.sleep(0.05)  # let a burst of lines gather into one event
            batch, pending[:] = list(pending), []
            if len(batch) > MAX_BATCH:
                skipped = len(batch) - MAX_BATCH
                batch = [f"[… {skipped} earlier lines not shown]", *batch[-MAX_BATCH:]]
            if batch:
                await emit("lines", {"id": stream, "lines": batch})
            if done and not pending:
                return


async def run_events(
    handle: RunHandle, status: Callable[[RunHandle], str], emit: Emit, *, interval: float
) -> None:
    """A run's page: its status while it changes, and its logs, until it has ended."""

    async def watch_state() -> None:
        last = None
        while True:
            try:
                await handle.refresh()
            except Exception as exc:  # a backend that does not answer: shown, retried
                html = f'<p class="error">refresh failed: {esc(type(exc).__name__)}: {esc(exc)}</p>'
            else:
                html = status(handle)
            if html != last:
                await emit("fragment", {"id": "status", "html": html})
                last = html
            if handle.state.is_terminal:
                return
            await anyio.sleep(interval)

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch_state)
        tg.start_soon(follow_logs, handle, "stdout", emit)
        tg.start_soon(follow_logs, handle, "stderr", emit)
    await emit("end", {})
