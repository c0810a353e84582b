"""``tether ui``: serve the dashboard of runs, pipelines and the cache on 127.0.0.1.

Only argparse wiring lives here; the dashboard itself (``tether.ui``, with Starlette
and uvicorn from the ``ui`` extra) is imported when the command runs.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from pathlib import Path

from .._files import default_runs_dir
from ..errors import ConfigError

EXIT_OK = 0
DEFAULT_PORT = 8780

#: The packages of the ``ui`` extra.
_EXTRA = ("starlette", "uvicorn", "h11", "click")


def port_number(text: str) -> int:
    """A TCP port, 0 to 65535 (an argparse type); 0 picks a free one."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port number (0-65535)")
    return value


def add_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    add: Callable[..., argparse.ArgumentParser],
) -> None:
    """Add ``tether ui`` to the CLI (``add`` is the parser's own ``_add``)."""
    sub: argparse.ArgumentParser = add(
        commands,
        "ui",
        "serve a live dashboard of runs, pipelines and the cache on 127.0.0.1",
        ui,
    )
    sub.add_argument(
        "runs_dirs",
        type=Path,
        nargs="*",
        metavar="RUNS_DIR",
        help="folders of run folders to show (default: $TETHER_HOME/runs)",
    )
    sub.add_argument(
        "--pipeline",
        type=Path,
        action="append",
        default=[],
        metavar="STATE",
        help="a pipeline to show: its state file, or its pipeline file (which also "
        "gives the steps' dependencies); repeat for more",
    )
    sub.add_argument(
        "--cache-store",
        type=Path,
        metavar="PATH",
        help="SQLite file or store folder whose entries to show (default "
        "$TETHER_CACHE_STORE, else ~/.cache/tether/cache.sqlite)",
    )
    sub.add_argument(
        "--port",
        type=port_number,
        default=DEFAULT_PORT,
        metavar="N",
        help=f"port on 127.0.0.1 (default {DEFAULT_PORT}; 0 picks a free one)",
    )


async def ui(args: argparse.Namespace) -> int:
    """Serve the dashboard until interrupted; its URL (with the token) goes to stdout."""
    serve = _load()
    runs_dirs: list[Path] = [p.expanduser().absolute() for p in args.runs_dirs]
    for folder in runs_dirs:
        if not folder.is_dir():
            raise ConfigError(f"Runs folder '{folder}' does not exist or is not a folder.")
    await serve(
        runs_dirs=runs_dirs or [default_runs_dir()],
        pipelines=[p.expanduser().absolute() for p in args.pipeline],
        cache_store=args.cache_store,
        port=args.port,
    )
    return EXIT_OK


def _load() -> Callable[..., Awaitable[None]]:
    try:
        from ..ui import serve
    except ModuleNotFoundError as exc:
        package = (exc.name or "").split(".")[0]
        if package not in _EXTRA:
            raise
        raise ConfigError(
            f"tether ui needs extra dependencies ({package} is missing): pip install 'tether[ui]'"
        ) from None
    return serve
