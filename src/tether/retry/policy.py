"""Retry policies: how many more attempts, after which endings, and how long between.

A policy is data (a frozen pydantic model), so it travels in config files, pipeline
files and saved handles. The back-off is exponential with jitter, computed here:
``min(max, initial * factor ** (n - 1))``, shrunk by a random fraction of up to
``jitter``. tenacity and stamina were considered and not used: both drive an
in-memory loop around a Python call, whereas a retried *run* outlives the process
that started it (its attempt count and next due time are saved and re-attached),
and the arithmetic they would contribute is the one line above.
"""

from __future__ import annotations

import random
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..result import RunResult, RunState

#: The endings a policy may retry; a cancelled run is never retried (someone meant it).
RETRYABLE = (RunState.FAILED, RunState.LOST, RunState.TIMED_OUT)


class Backoff(BaseModel):
    """Delays between attempts: exponential, capped, with jitter.

    The delay before retry ``n`` (1 for the second attempt) is
    ``min(max, initial * factor ** (n - 1))``, multiplied by a random number in
    ``[1 - jitter, 1]``, so it never exceeds ``max`` and retries of many runs that
    failed together spread out.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    initial: float = Field(
        1.0, ge=0, le=86400, description="Seconds before the first retry.", examples=[1.0]
    )
    factor: float = Field(
        2.0,
        ge=1,
        le=100,
        description="Each further delay is this many times the previous.",
        examples=[2.0],
    )
    max: float = Field(
        300.0, ge=0, le=86400, description="The longest delay, in seconds.", examples=[300.0]
    )
    jitter: float = Field(
        0.1,
        ge=0,
        le=1,
        description="Fraction (0-1) by which each delay is shortened at random.",
        examples=[0.1],
    )

    def delay(self, retry: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (1-based)."""
        if retry < 1:
            raise ValueError(f"retry numbers start at 1, not {retry}")
        base = min(self.max, self.initial * self.factor ** min(retry - 1, 1000))
        draw = (rng or random).random()
        return base * (1.0 - self.jitter * draw)


class RetryPolicy(BaseModel):
    """When a run that ended badly is submitted again, and how often.

    ``retries`` counts the attempts after the first; ``retry_on`` names the
    endings worth another attempt (``FAILED``, ``LOST``, ``TIMED_OUT``: a cancelled
    run is never retried); ``exit_codes``, when given, retries a ``FAILED`` run only
    with one of those exit codes (a scheduler's "preempted" code); ``backoff`` is
    the delay between attempts (:class:`Backoff`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    retries: int = Field(
        2, ge=0, le=100, description="Attempts after the first (0-100).", examples=[3]
    )
    backoff: Backoff = Field(
        default_factory=Backoff,
        description="Delays between attempts: initial, factor, max (seconds), jitter.",
        examples=[{"initial": 5, "factor": 2, "max": 600, "jitter": 0.1}],
    )
    retry_on: tuple[RunState, ...] = Field(
        (RunState.FAILED, RunState.LOST),
        description="Endings that are retried: FAILED, LOST, TIMED_OUT.",
        examples=[["LOST", "TIMED_OUT"]],
    )
    exit_codes: tuple[int, ...] | None = Field(
        None,
        description="Retry a FAILED run only with one of these exit codes (default: any).",
        examples=[[75, 143]],
    )

    @field_validator("backoff", mode="before")
    @classmethod
    def _backoff(cls, value: Any) -> Any:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return {"initial": value}  # a plain number: the first delay, defaults otherwise
        return value

    @field_validator("retry_on", mode="before")
    @classmethod
    def _states(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list | tuple | set | frozenset):
            raise ValueError("retry_on must be a list of states, e.g. ['LOST', 'FAILED']")
        states = []
        for item in value:
            name = item.value if isinstance(item, RunState) else str(item).upper()
            if name not in {s.value for s in RETRYABLE}:
                raise ValueError(
                    f"retry_on: {item!r} cannot be retried; use FAILED, LOST or TIMED_OUT "
                    "(a cancelled run is never retried)"
                )
            states.append(RunState(name))
        return tuple(dict.fromkeys(states))

    @model_validator(mode="after")
    def _codes_need_failed(self) -> RetryPolicy:
        if self.exit_codes is not None and RunState.FAILED not in self.retry_on:
            raise ValueError("exit_codes filter FAILED runs: add FAILED to retry_on, or drop them")
        return self

    def should_retry(self, result: RunResult) -> bool:
        """Whether ``result`` is an ending this policy retries (the count aside)."""
        if result.state not in self.retry_on:
            return False
        if result.state is RunState.FAILED and self.exit_codes is not None:
            return result.exit_code in self.exit_codes
        return True

    def delay(self, retry: int, rng: random.Random | None = None) -> float:
        """Seconds before retry number ``retry`` (1 for the second attempt)."""
        return self.backoff.delay(retry, rng)
