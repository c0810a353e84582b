"""Serving the dashboard: a socket on 127.0.0.1, uvicorn, and the URL to open."""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import TextIO

import uvicorn

from ..errors import ConfigError
from ._security import Guard
from .app import Settings, create_app

#: The only address the dashboard listens on.
HOST = "127.0.0.1"


def listen(port: int) -> socket.socket:
    """A listening socket on 127.0.0.1:``port`` (0: a free port the system picks)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((HOST, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"Cannot listen on {HOST}:{port}: {exc.strerror or exc}; "
            "give another --port (0 picks a free one)."
        ) from exc
    sock.setblocking(False)
    return sock


async def serve(
    *,
    runs_dirs: list[Path],
    pipelines: list[Path] | None = None,
    cache_store: Path | None = None,
    port: int = 0,
    interval: float = 1.0,
    out: TextIO | None = None,
) -> None:
    """Serve the dashboard until interrupted; print its URL (with the token) first.

    The URL goes to ``out`` (default stdout) as one line, so scripts can read it;
    the port is the real one when ``port`` is 0.
    """
    sock = listen(port)
    guard = Guard(sock.getsockname()[1])
    settings = Settings(
        guard=guard,
        runs_dirs=runs_dirs,
        pipelines=list(pipelines or []),
        cache_store=cache_store,
        interval=interval,
    )
    config = uvicorn.Config(
        create_app(settings),
        host=HOST,
        port=guard.port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        ws="none",
        proxy_headers=False,
        server_header=False,
        # Live-event streams never end by themselves: do not wait long for them.
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    print("tether: serving the dashboard (Ctrl-C stops it); open:", file=sys.stderr, flush=True)
    print(guard.url, file=out or sys.stdout, flush=True)
    try:
        await server.serve(sockets=[sock])
    finally:
        sock.close()
