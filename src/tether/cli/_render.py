"""What the CLI prints: summary lines, JSON, error lines and the live status line."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from rich.live import Live
    from rich.spinner import Spinner

    from ..result import RunResult, RunState


def summary(result: RunResult, folder: Path | None = None) -> str:
    """One line for a finished run: id, state, exit code, duration, reason, folder."""
    details = []
    # Skip the exit code when the error already gives it ("exit code 127 (command...").
    if result.exit_code is not None and f"exit code {result.exit_code}" not in (result.error or ""):
        details.append(f"exit code {result.exit_code}")
    if result.duration is not None:
        details.append(f"{result.duration:.1f}s")
    line = f"{result.run_id}: {result.state.value}"
    if details:
        line += f" ({', '.join(details)})"
    # "CANCELLED: cancelled" says nothing twice.
    if result.error and result.error.lower() != result.state.value.lower():
        line += f": {result.error}"
    if folder is not None:
        line += f"; run folder: {folder}"
    return line


def state_line(run_id: str, state: RunState) -> str:
    """One line for a run that has not ended."""
    return f"{run_id}: {state.value}"


def result_json(result: RunResult) -> str:
    """The result as indented JSON (``model_dump(mode="json")``)."""
    return json.dumps(result.model_dump(mode="json"), indent=2)


def state_json(run_id: str, state: RunState) -> str:
    """A run that has not ended, as JSON with the same keys a result starts with."""
    return json.dumps({"run_id": run_id, "state": state.value}, indent=2)


def error_lines(message: str) -> list[str]:
    """``tether: error: …`` for each line of a (possibly multi-line) message."""
    # split("\n"), not splitlines(): messages are one problem per \n-separated line.
    lines = [line for line in message.split("\n") if line.strip()] or ["unknown error"]
    return [f"tether: error: {line}" for line in lines]


def describe_os_error(exc: OSError) -> str:
    """``'path': reason`` rather than Python's ``[Errno 2] …`` form."""
    reason = exc.strerror or str(exc)
    if exc.filename is not None:
        return f"'{exc.filename}': {reason}"
    return reason


class StatusDisplay:
    """Shows a run's progress on ``stream`` while the CLI waits for it.

    On a terminal, a rich spinner line with the run id, state and elapsed time,
    erased when the wait ends. Elsewhere (logs, CI, pipes), a plain line at each
    state change only, so the output stays readable and small.
    """

    def __init__(self, stream: TextIO, run_id: str, *, live: bool) -> None:
        self._stream = stream
        self._run_id = run_id
        self._started = time.monotonic()
        self._last: RunState | None = None
        self._live: Live | None = None
        self._spinner: Spinner | None = None
        if live:
            # Imported here: rich is only needed on a terminal, and `import tether` stays light.
            from rich.console import Console
            from rich.live import Live
            from rich.spinner import Spinner

            self._spinner = Spinner("dots", text=run_id)
            console = Console(file=stream, highlight=False)
            self._live = Live(self._spinner, console=console, transient=True, refresh_per_second=8)
            self._live.start()

    def update(self, state: RunState) -> None:
        """Show ``state``: redraw the live line, or print a line if the state changed."""
        if self._spinner is not None:
            elapsed = time.monotonic() - self._started
            self._spinner.update(text=f"{self._run_id}  {state.value}  {elapsed:.0f}s")
        elif state is not self._last and not state.is_terminal:
            # The terminal state is reported by the summary line; don't say it twice.
            self._stream.write(state_line(self._run_id, state) + "\n")
            self._stream.flush()
        self._last = state

    def clear(self) -> None:
        """Erase the live line so the next output starts on a clean line."""
        if self._live is not None:
            self._live.stop()
            self._live = None
            self._spinner = None


def table(rows: list[list[str]]) -> list[str]:
    """Rows as left-aligned columns two spaces apart (the first row is the header)."""
    if not rows:
        return []
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def write_lines(stream: TextIO, lines: list[str]) -> None:
    """Write lines and flush (progress and errors must show up at once)."""
    for line in lines:
        stream.write(line + "\n")
    stream.flush()
