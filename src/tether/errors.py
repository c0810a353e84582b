"""Every error tether raises on purpose.

The tree::

    TetherError
    ├── ConfigError (ValueError)          bad backend config, job file or option
    │   └── UnknownBackendError (KeyError) no backend registered under a name
    ├── ArgumentTypeError (TypeError)     an argument of the wrong type (names what is accepted)
    ├── RecordError (ValueError)          a saved handle record cannot be read
    │   └── RecordVersionError            a record written by a newer/unknown schema
    ├── SubmitError (RuntimeError)        a backend could not start a run
    ├── BackendUnavailableError (RuntimeError)  a backend cannot be used on this machine
    ├── BackendError (RuntimeError)       a backend's service refused a request (Docker engine…)
    ├── RunFailedError (RuntimeError)     ``result()`` of a run that did not succeed
    │   └── RunTimedOutError (TimeoutError)  … because it ran past its timeout
    ├── CallError (RuntimeError)          a Call's exception that cannot be rebuilt here
    ├── MapError (RuntimeError)           some calls of a keep-going map or ensemble failed
    ├── WaitTimeout (TimeoutError)        ``wait(timeout=…)`` ran out; the run goes on
    ├── DeadlockError (RuntimeError)      ``tether.sync`` called from its own loop's thread
    └── InvalidTransitionError (RuntimeError)  an illegal run-state change
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .result import RunResult, RunState


class TetherError(Exception):
    """Raised when tether refuses or fails something on purpose; the root of all its errors."""


class ConfigError(TetherError, ValueError):
    """Raised when a backend config, job file or option is invalid."""


class ArgumentTypeError(TetherError, TypeError):
    """Raised when a function gets an argument of a type it does not take; the message
    names the argument, what was given and what is accepted."""


class UnknownBackendError(ConfigError, KeyError):
    """Raised when no backend is registered under the requested type name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class RecordError(TetherError, ValueError):
    """Raised when a saved handle record is missing, corrupt or truncated."""


class RecordVersionError(RecordError):
    """Raised when a saved record has a schema version this tether cannot read."""


class SubmitError(TetherError, RuntimeError):
    """Raised when a backend cannot start a run (missing input, unwritable run folder…)."""


class BackendUnavailableError(TetherError, RuntimeError):
    """Raised when a backend cannot be used on this machine (missing tool or extra)."""


class BackendError(TetherError, RuntimeError):
    """Raised when a backend's service (a Docker engine, a scheduler) refuses a request."""


class RunFailedError(TetherError, RuntimeError):
    """Raised by ``RunHandle.result()`` when the run ended in any state but SUCCEEDED."""

    def __init__(self, result: RunResult) -> None:
        self.result = result
        detail = f": {result.error}" if result.error else ""
        super().__init__(f"Run {result.run_id} ended {result.state.value}{detail}")


class RunTimedOutError(RunFailedError, TimeoutError):
    """Raised by ``RunHandle.result()`` when the run ended TIMED_OUT (``except TimeoutError``
    catches it, as rompy's users write)."""


class CallError(TetherError, RuntimeError):
    """Raised by ``result()`` in place of a Call's exception whose class cannot be unpickled."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message


class MapError(TetherError, RuntimeError):
    """Raised by ``map_calls``/``Ensemble`` with ``keep_going=True`` when calls failed.

    ``results`` holds every call's result in input order; ``failures`` the failed ones.
    """

    def __init__(self, results: list[RunResult]) -> None:
        self.results = results
        self.failures = [r for r in results if not r.ok]
        first = self.failures[0] if self.failures else None
        detail = f"; first: {first.error}" if first is not None and first.error else ""
        super().__init__(f"{len(self.failures)} of {len(results)} calls failed{detail}")


class WaitTimeout(TetherError, TimeoutError):
    """Raised when ``wait(timeout=…)`` runs out; the run itself keeps going."""


class DeadlockError(TetherError, RuntimeError):
    """Raised when the synchronous facade (``tether.sync``) is called from its own
    event-loop thread, where blocking on the loop would wait for itself forever."""


class InvalidTransitionError(TetherError, RuntimeError):
    """Raised when a run would move between states the state machine forbids."""

    def __init__(self, run_id: str, current: RunState, new: RunState) -> None:
        self.current = current
        self.new = new
        super().__init__(f"Run {run_id} cannot move from {current.value} to {new.value}")
