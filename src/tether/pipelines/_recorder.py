"""What a pipeline run tells as it goes: journal lines, subscribers' events, the reports.

Every transition of a step or stage goes through one :class:`Recorder` method, which
updates the step's report, appends the journal line (when there is a state file)
and sends the event (when anyone listens), in that order: the journal knows of a
transition before anything is told of it.
"""

from __future__ import annotations

import contextlib
import time
from datetime import UTC, datetime
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from .._live import PipelineTable
from ._reports import now, when
from .journal import Journal
from .report import PipelineEvent, StageReport, StepReport, StepState


class Recorder:
    """The reports of one pipeline run, its journal and its event subscribers."""

    def __init__(
        self,
        journal: Journal | None,
        subscribers: list[MemoryObjectSendStream[PipelineEvent]],
        live: PipelineTable,
        reports: dict[str, StepReport],
        digests: dict[str, str],
    ) -> None:
        self.journal = journal
        self.subscribers = subscribers
        self.live = live
        self.reports = reports
        self.digests = digests

    @property
    def journaling(self) -> bool:
        """Whether lines are journaled (build costly events only then)."""
        return self.journal is not None

    def record(self, event: dict[str, Any]) -> None:
        """Journal one transition (nothing without a state file)."""
        if self.journal is not None:
            self.journal.append(event)

    @property
    def listened(self) -> bool:
        """Whether anyone hears events (subscribers, or the live table)."""
        return bool(self.subscribers) or self.live.table.active

    def emit(self, kind: Any, state: str, **fields: Any) -> None:
        """Tell the subscribers and the live table (nothing is built when none listens)."""
        if not self.subscribers and not self.live.table.active:
            return
        event = PipelineEvent(kind=kind, state=state, time=datetime.now(UTC), **fields)
        self.live.event(event)
        for send in self.subscribers:
            # A subscriber that stopped listening misses the rest, nothing more.
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                send.send_nowait(event)

    def close(self) -> None:
        """End every subscriber's stream."""
        for send in self.subscribers:
            send.close()

    # -- transitions ---------------------------------------------------------------------

    def start(self, name: str, fresh: bool) -> None:
        """The step starts (``fresh``: what an earlier definition recorded no longer stands)."""
        report = self.reports[name]
        report.state, report.started_at, report.digest = (
            StepState.RUNNING,
            now(),
            self.digests[name],
        )
        event: dict[str, Any] = {
            "e": "step",
            "step": name,
            "digest": self.digests[name],
            "state": "RUNNING",
        }
        if fresh:
            event["fresh"] = True
        self.record(event)
        self.emit("step", "RUNNING", step=name)

    def stage(self, name: str, stage: str, state: str, message: str | None = None) -> None:
        """One of the step's stages moves to ``state``."""
        report = self.reports[name].stages.setdefault(stage, StageReport())
        seconds = time.time()
        if state == "RUNNING":
            report.started_at = when(seconds)
        else:
            report.ended_at = when(seconds)
        report.state, report.message = state, message
        self.record(
            {
                "e": "stage",
                "step": name,
                "stage": stage,
                "state": state,
                "message": message,
                "started": report.started_at and report.started_at.timestamp(),
                "time": seconds,
            }
        )
        self.emit("stage", state, step=name, stage=stage, message=message)

    def end(self, name: str, state: StepState, reason: str | None = None) -> None:
        """The step ends in ``state`` (SUCCEEDED, FAILED, SKIPPED or CANCELLED)."""
        report = self.reports[name]
        report.state, report.reason, report.ended_at = state, reason, now()
        if not report.digest:
            report.digest = self.digests[name]
        self.record(
            {
                "e": "step",
                "step": name,
                "digest": self.digests[name],
                "state": state.value,
                "reason": reason,
            }
        )
        self.emit("step", state.value, step=name, message=reason)
