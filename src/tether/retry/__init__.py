"""Retries: a wrapper over any backend that runs a job again after a passing failure.

``RetryingBackend(inner, RetryPolicy(...))`` (or ``RetryConfig`` in a file, ``type:
retry``) returns one :class:`RetryRunHandle` for all the attempts of a run; see
``docs/retries.md``.
"""

from __future__ import annotations

from ._state import Attempt
from .backend import RetryConfig, RetryingBackend
from .handle import RetryRunHandle
from .policy import Backoff, RetryPolicy

__all__ = [
    "Attempt",
    "Backoff",
    "RetryConfig",
    "RetryPolicy",
    "RetryRunHandle",
    "RetryingBackend",
]
