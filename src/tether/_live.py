"""Live displays for long waits in Jupyter: a table that updates in place, no ipywidgets.

A :class:`LiveTable` shows one row per run (or per call, or per pipeline step) with
its state and a detail, under a progress bar. It is shown with
``IPython.display.display(..., display_id=True)`` and redrawn through the display
handle's ``update``, so the notebook keeps one output that changes, and the final
table stays in the saved notebook.

It is used only inside an IPython *kernel* (Jupyter, VS Code, nbclient): never in
a plain terminal, a script or a terminal IPython. IPython is never imported here
at import time; :func:`in_kernel` looks only at an IPython already loaded.

For callers (``map_calls``, ``Ensemble``, pipelines, the watching helpers)::

    table = live_table("waiting", keys=[h.run_id for h in handles], progress=progress)
    with table:                      # a no-op table outside a kernel or with progress=False
        table.update(run_id, RunState.RUNNING)
        table.update(run_id, result.state, detail="exit code 0")

``update`` is synchronous and cheap: it redraws at most every ``min_interval``
seconds (four times a second by default); a change that comes sooner is drawn by a
timer on the running event loop (asyncio or trio), or by the next update, or at
``close``, which always draws the final state.
"""

from __future__ import annotations

import asyncio
import importlib
import sys
import time
from collections.abc import Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from . import _html

if TYPE_CHECKING:
    from .pipelines.report import PipelineEvent

#: Seconds between two redraws at least (at most four a second).
MIN_INTERVAL = 0.25
#: Rows shown at most; the rest are counted (running and failed ones shown first).
MAX_ROWS = 30


def in_kernel() -> bool:
    """True inside an IPython kernel (a notebook), False in terminals and scripts."""
    ipython = sys.modules.get("IPython")  # a kernel has imported it long before us
    get_ipython = getattr(ipython, "get_ipython", None)
    if get_ipython is None:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def wanted(progress: bool | None) -> bool:
    """Whether a live table should show: ``progress`` not False, and inside a kernel."""
    if progress is not None and not isinstance(progress, bool):
        raise TypeError(f"progress must be True, False or None, not {progress!r}")
    return progress is not False and in_kernel()


class _Snapshot:
    """What is displayed: HTML for notebooks, one line of text for other front ends."""

    def __init__(self, html: str, text: str) -> None:
        self._html = html
        self._text = text

    def _repr_html_(self) -> str:
        return self._html

    def __repr__(self) -> str:
        return self._text


class LiveTable:
    """Rows of ``key → (state, detail)`` shown in a notebook and redrawn in place.

    Args:
        title: what is being waited for ("map square", "pipeline 'nightly'").
        keys: the rows known from the start (shown PENDING); ``update`` adds others.
        total: how many rows will come, for the progress bar (default: ``len(keys)``).
        column: the heading of the key column ("run", "call", "step").
        min_interval: seconds between two redraws at least.
        max_rows: rows shown at most.
        active: False gives a table that records rows but never displays anything
            (what :func:`live_table` returns outside a kernel).
    """

    def __init__(
        self,
        title: str,
        keys: Iterable[str] = (),
        *,
        total: int | None = None,
        column: str = "run",
        min_interval: float = MIN_INTERVAL,
        max_rows: int = MAX_ROWS,
        active: bool = True,
    ) -> None:
        self.title = title
        self.column = column
        self.rows: dict[str, tuple[str, str | None]] = {str(k): ("PENDING", None) for k in keys}
        self.total = len(self.rows) if total is None else total
        self.min_interval = min_interval
        self.max_rows = max_rows
        self.active = active
        self.closed = False
        #: How many times the display was drawn (the first display included).
        self.draws = 0
        self._display: Any = None
        self._last_draw = 0.0
        self._dirty = False
        self._timer: Any = None

    # -- the API callers use ----------------------------------------------------------

    def update(self, key: str, state: object, detail: str | None = None) -> None:
        """Set row ``key`` to ``state`` (a ``RunState``, ``StepState`` or its name).

        ``detail`` replaces the row's detail when given (run id, exit code, error).
        """
        name = str(getattr(state, "value", state))
        old_detail = self.rows.get(str(key), ("PENDING", None))[1]
        self.rows[str(key)] = (name, old_detail if detail is None else detail)
        self.total = max(self.total, len(self.rows))
        self._dirty = True
        self._maybe_draw()

    def close(self) -> None:
        """Draw the final state (always) and stop updating; idempotent."""
        if self.closed:
            return
        self.closed = True
        self._cancel_timer()
        if self.active and (self._display is not None or self.rows):
            self._draw()

    def __enter__(self) -> LiveTable:
        if self.active:
            self._draw()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- what is shown ----------------------------------------------------------------

    @property
    def done(self) -> int:
        """Rows in a terminal state."""
        return sum(1 for state, _ in self.rows.values() if state not in ("PENDING", "RUNNING"))

    def _repr_html_(self) -> str:
        return _html.live_html(
            self.title,
            self.column,
            self.rows,
            total=self.total,
            max_rows=self.max_rows,
            closed=self.closed,
        )

    def __repr__(self) -> str:
        counts: dict[str, int] = {}
        for state, _ in self.rows.values():
            counts[state] = counts.get(state, 0) + 1
        states = ", ".join(f"{n} {state}" for state, n in counts.items())
        return f"{self.title}: {self.done}/{self.total} done" + (f" ({states})" if states else "")

    # -- drawing ------------------------------------------------------------------------

    def _maybe_draw(self) -> None:
        if not self.active or self.closed:
            return
        wait = self._last_draw + self.min_interval - time.monotonic()
        if wait <= 0:
            self._draw()
        elif self._timer is None:
            self._timer = _call_later(wait, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._dirty and not self.closed:
            self._draw()

    def _cancel_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()

    def _draw(self) -> None:
        snapshot = _Snapshot(self._repr_html_(), repr(self))
        try:
            if self._display is None:
                display = importlib.import_module("IPython.display").display
                self._display = display(snapshot, display_id=True)
            else:
                self._display.update(snapshot)
        except Exception:  # a display that breaks must not stop the runs it shows
            self.active = False
            return
        self.draws += 1
        self._dirty = False
        self._last_draw = time.monotonic()


def live_table(
    title: str,
    keys: Iterable[str] = (),
    *,
    progress: bool | None = None,
    total: int | None = None,
    column: str = "run",
) -> LiveTable:
    """A :class:`LiveTable` that displays when :func:`wanted` says so, else a silent one.

    ``progress``: None (the default) shows the table inside a Jupyter kernel only;
    False never shows it; True is the same as None here (nothing to show it on
    outside a kernel).
    """
    return LiveTable(title, keys, total=total, column=column, active=wanted(progress))


class _Cancel:
    """A timer handle with ``cancel()`` for the trio flavour of :func:`_call_later`."""

    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


def _call_later(delay: float, callback: Any) -> Any:
    """Run ``callback`` after ``delay`` seconds on the running event loop, if any.

    The callback runs in the loop's thread, in the caller's context (the kernel
    routes the display to the cell that started it). Without a running loop it
    returns None and the next update or ``close`` draws instead.
    """
    try:
        return asyncio.get_running_loop().call_later(delay, callback)
    except RuntimeError:
        pass  # not on an asyncio loop: trio, or no loop at all
    trio = sys.modules.get("trio")
    if trio is None:
        return None
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        return None
    handle = _Cancel()

    async def later() -> None:
        await trio.sleep(delay)
        if not handle.cancelled:
            callback()

    trio.lowlevel.spawn_system_task(later)
    return handle


class PipelineTable:
    """A pipeline's live table: one row per step, fed with the pipeline's events.

    A row shows the step's state and, while it runs, its stage and how many of its
    runs have ended; at the end, the reason it did not succeed.
    """

    def __init__(self, name: str, members: dict[str, int], *, active: bool) -> None:
        self.table = LiveTable(f"pipeline {name!r}", members, column="step", active=active)
        self._members = members
        self._ended: dict[str, set[int]] = {step: set() for step in members}

    def open(self) -> None:
        """Show the table (every step PENDING)."""
        self.table.__enter__()

    def close(self) -> None:
        """Draw the final state."""
        self.table.close()

    def event(self, event: PipelineEvent) -> None:
        """Apply one pipeline event to its step's row."""
        step = event.step
        if step is None or step not in self._members:
            return  # a pipeline-wide event: the rows say it all
        state = self.table.rows[step][0]
        if event.kind == "step":
            detail = event.message if event.state != "RUNNING" else None
            self.table.update(step, event.state, detail or self._runs(step))
        elif event.kind == "stage" and event.state == "RUNNING":
            self.table.update(step, state, f"{event.stage} …")
        elif event.kind == "run":
            if event.state not in ("PENDING", "RUNNING") and event.member is not None:
                self._ended[step].add(event.member)
            self.table.update(step, state, f"run … {self._runs(step)}")
        elif event.kind == "postprocess":
            self.table.update(step, state, "postprocess …")

    def _runs(self, step: str) -> str:
        total = self._members[step]
        return f"{len(self._ended[step])}/{total} runs ended" if total else ""


def pipeline_table(name: str, members: dict[str, int], *, progress: bool | None) -> PipelineTable:
    """A :class:`PipelineTable` that displays when :func:`wanted` says so."""
    return PipelineTable(name, members, active=wanted(progress))
