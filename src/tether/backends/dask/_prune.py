"""``tether dask prune``: release ended runs that a scheduler still keeps.

A run's outcome stays on its scheduler (a published dataset named by the run id)
until ``handle.forget()``; this is the cleanup for handles nobody will load again.
A dataset counts as tether's only when it is a future keyed by its own name whose
outcome has tether's shape: other datasets on a shared scheduler are never touched.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from ...errors import ConfigError
from . import _client
from ._task import cancel_event_name
from .config import DaskConfig

#: The scheduler's task states of a run that is over (its outcome is kept, or lost).
ENDED = ("memory", "erred", "released", "forgotten", "lost")


@dataclass(frozen=True)
class PrunedRun:
    """One run seen by :func:`prune`, and what was done with it."""

    run_id: str
    #: The scheduler's state of its task (memory: its outcome is kept).
    status: str
    #: Seconds since the run ended (None while it runs, or when unknown).
    age: float | None
    #: running | kept (younger than older_than) | released | would release
    action: str

    def to_json(self) -> dict[str, Any]:
        """The entry as a JSON-ready dict."""
        return asdict(self)


async def prune(
    config: DaskConfig, *, older_than: float | None = None, dry_run: bool = False
) -> list[PrunedRun]:
    """Release the ended runs of the scheduler at ``config.address`` (its TLS files
    too) that ended at least ``older_than`` seconds ago (all ended ones by default).

    Runs still going are listed and left alone; ``dry_run`` releases nothing.
    """
    if config.address is None:
        raise ConfigError(
            "Pruning needs a scheduler address: give the config an address (an embedded "
            "cluster's runs end with its process)."
        )
    report: list[PrunedRun] = []
    async with _client.connect(config.address, config) as client:
        names = sorted(await client.list_datasets())
        futures: dict[str, Any] = {}
        for name in names:
            dataset = await client.get_dataset(name)
            if getattr(dataset, "key", None) == name:
                futures[name] = dataset
        states = await client.scheduler.get_task_status(keys=list(futures))
        now = time.time()
        for name, future in futures.items():
            status = str(states.get(name) or "forgotten")
            if status not in ENDED:
                report.append(PrunedRun(name, status, None, "running"))
                continue
            age: float | None = None
            if status == "memory":
                outcome = await future
                if not isinstance(outcome, dict) or "reason" not in outcome:
                    continue  # not a tether run: never touched
                ended = outcome.get("ended")
                age = now - float(ended) if isinstance(ended, int | float) else None
            if older_than is not None and (age is None or age < older_than):
                report.append(PrunedRun(name, status, age, "kept"))
                continue
            if not dry_run:
                await client.unpublish_dataset(name)
                event = _client.distributed().Event(cancel_event_name(name), client=client)
                await event.clear()
            report.append(PrunedRun(name, status, age, "would release" if dry_run else "released"))
    return report
