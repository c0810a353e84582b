"""What a backend can do (capabilities) and whether it can be used here (availability).

Capabilities are plain strings so that plugins can add their own; the ones tether
itself understands are listed in :data:`CAPABILITIES` with what they promise.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from dataclasses import dataclass

#: The capability names tether knows, with what each one promises.
CAPABILITIES: dict[str, str] = {
    "commands": "runs command jobs (argv lists or shell strings)",
    "calls": "runs Python Call jobs",
    "detached": "a run outlives the Python process that submitted it",
    "reattach": "a saved handle re-attaches to the run from another process",
    "find": "submit(job, run_id=...) uses the given id and find() re-attaches to that run "
    "after the submitter died, so a resumed pipeline never starts a step twice",
    "cancel": "cancel() ends the run and everything it started",
    "timeout": "the backend itself enforces the run's timeout",
    "logs_follow": "logs(follow=True) streams new lines while the run goes on",
    "gpus": "can give runs GPUs (Resources.gpus)",
    "arrays": "submits many similar runs as one array job",
    "cluster": "runs on other machines than this one",
    "simulated": "fake runs for tests and docs; never recommended for real work",
}


@dataclass(frozen=True)
class Availability:
    """Whether a backend can be used on this machine, and if not, why."""

    usable: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.usable


def missing_extra(backend: str, modules: Iterable[str], extra: str) -> Availability:
    """Unusable, naming the pip extra, when any of ``modules`` cannot be imported.

    Looks the modules up without importing them, so checking stays cheap.
    """
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        return Availability(
            False,
            f"Backend '{backend}' needs extra dependencies: pip install 'tether[{extra}]'",
        )
    return Availability(True)
