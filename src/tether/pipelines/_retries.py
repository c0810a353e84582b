"""Retried steps in a pipeline: their attempts journaled, their runs re-adopted.

A step with a retry policy runs on a :class:`~tether.retry.RetryingBackend`; each
time one of its runs submits or ends an attempt, the run's handle record (with the
attempts so far) is journaled again, so a pipeline killed during attempt 2 and
resumed re-attaches to attempt 2 and keeps counting from there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..backend import Backend
from ..handle import RunHandle
from ..job import Job
from ..retry.backend import RetryingBackend
from ..retry.handle import RetryRunHandle
from .report import MemberReport


def journal_attempts(
    handle: RunHandle,
    report: MemberReport,
    record: Callable[[dict[str, Any]], None],
    step: str,
    index: int,
) -> None:
    """Journal a retried run's record (and report its attempt count) at each attempt."""
    if not isinstance(handle, RetryRunHandle):
        return

    def journal(retried: RetryRunHandle) -> None:
        attempts = [a.model_dump(mode="json", exclude={"record"}) for a in retried.attempts]
        report.attempts = len(attempts)
        record(
            {
                "e": "member",
                "step": step,
                "member": index,
                "handle": retried.to_record(),
                "attempts": attempts,
            }
        )

    report.attempts = len(handle.attempts)
    handle.on_attempt(journal)


def adopt(handle: RunHandle, job: Job, backend: Backend[Any]) -> None:
    """A reloaded retried run submits its next attempts with this run's job (its
    secret values included) on this run's backend."""
    if isinstance(handle, RetryRunHandle) and isinstance(backend, RetryingBackend):
        handle._adopt(job, backend.inner)
