"""``tether ls``: the runs found in a runs folder, with their state and age."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from .._files import default_runs_dir
from ..errors import ConfigError, TetherError
from ..registry import load_handle
from ._render import table, write_lines

EXIT_OK = 0

#: Handles loaded at once: each load may ask a backend (a process, an engine) for news.
LOAD_LIMIT = 16


@dataclass
class _Row:
    run_id: str
    handle: Path
    submitted: float
    backend: str = "?"
    name: str = "?"
    state: str = "?"
    exit_code: int | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "name": self.name,
            "backend": self.backend,
            "state": self.state,
            "exit_code": self.exit_code,
            "submitted": self.submitted,
            "handle": str(self.handle),
            "error": self.error,
        }


def age(seconds: float) -> str:
    """A short age: ``42s``, ``7m``, ``3h``, ``12d``."""
    seconds = max(seconds, 0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


async def _fill(row: _Row, limiter: anyio.CapacityLimiter) -> None:
    async with limiter:
        try:
            handle = await load_handle(row.handle)
        except TetherError as exc:
            row.error = str(exc).splitlines()[0]
            return
    row.backend, row.name, row.state = handle.backend_type, handle.job.name, handle.state.value
    if handle.last_result is not None:
        row.exit_code = handle.last_result.exit_code
        row.error = handle.last_result.error


async def ls(args: argparse.Namespace) -> int:
    """List every run folder that holds a ``handle.json``, oldest first."""
    runs_dir: Path = args.runs_dir if args.runs_dir is not None else default_runs_dir()
    if not runs_dir.is_dir():
        if args.runs_dir is not None:
            raise ConfigError(f"Runs folder '{runs_dir}' does not exist or is not a folder.")
        rows: list[_Row] = []
    else:
        rows = []
        for folder in runs_dir.iterdir():
            record = folder / "handle.json"
            try:
                submitted = record.stat().st_mtime
            except OSError:
                continue  # not a run folder (or one still being created)
            rows.append(_Row(folder.name, record, submitted))
        limiter = anyio.CapacityLimiter(LOAD_LIMIT)
        async with anyio.create_task_group() as tg:
            for row in rows:
                tg.start_soon(_fill, row, limiter)
        rows.sort(key=lambda row: (row.submitted, row.run_id))
    if args.json:
        write_lines(sys.stdout, [json.dumps([row.to_json() for row in rows], indent=2)])
        return EXIT_OK
    if not rows:
        write_lines(sys.stderr, [f"tether: no runs in {runs_dir}"])
        return EXIT_OK
    now = time.time()
    lines = [["RUN ID", "BACKEND", "STATE", "EXIT", "AGE", "NOTE"]]
    for row in rows:
        exit_code = "" if row.exit_code is None else str(row.exit_code)
        lines.append(
            [
                row.run_id,
                row.backend,
                row.state,
                exit_code,
                age(now - row.submitted),
                row.error or "",
            ]
        )
    write_lines(sys.stdout, table(lines))
    return EXIT_OK
