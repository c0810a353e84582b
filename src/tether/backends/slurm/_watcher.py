"""One watcher per event loop for every Slurm run awaited in it.

Waiting handles register their job here. Whichever of them finds nobody driving
drives one *round*: a short sleep, a look at every tracked run's outcome file
(finished jobs are read from there, not from the queue), and, when due, one
``squeue`` call for all tracked jobs at once (chunked only for very long lists).
The queue query backs off from ``poll_interval`` to ``poll_interval_max`` while
nothing changes, and starts again quickly when a new job is tracked. With
nothing tracked there is no round and no call at all, and no background task:
the watcher lives only while someone waits, so cancelling waiters never leaks it.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.lowlevel

from ._commands import QueueEntry, QueueUnavailable, loop_key, squeue

log = logging.getLogger("tether.slurm")

#: Seconds between looks at the outcome files of tracked runs (per 100 runs tracked).
FILE_TICK = 0.25


@dataclass
class Tracked:
    """One job someone waits for: what the watcher last learnt about it."""

    job_id: str
    outcome: Path
    waiters: int = 0
    #: The job's queue entry at the last query; None when the queue did not list it.
    entry: QueueEntry | None = None
    #: When the last query that covered this job answered (monotonic), or None.
    seen_at: float | None = None
    #: Set by a round that found news (outcome file, queue state); cleared by the waiter.
    news: bool = False


def array_base(job_id: str) -> str:
    """The id to ask squeue about: the array's for a member ("123_4" → "123")."""
    return job_id.split("_", 1)[0]


@dataclass
class Watcher:
    """The tracked jobs of one event loop, and the state of the rounds."""

    interval: float
    interval_max: float
    tracked: dict[str, Tracked] = field(default_factory=dict)
    driving: bool = False
    round_done: anyio.Event = field(default_factory=anyio.Event)
    next_query: float = 0.0
    backoff: float = 0.0
    queries: int = 0
    #: Lookups (from refresh) waiting for the next batched query, and its state.
    asked: list[_Lookup] = field(default_factory=list)
    looking: bool = False
    looked: anyio.Event = field(default_factory=anyio.Event)

    def track(self, job_id: str, outcome: Path) -> Tracked:
        entry = self.tracked.get(job_id)
        if entry is None:
            entry = self.tracked[job_id] = Tracked(job_id, outcome)
            # A new job: ask about it soon, whatever the back-off had reached.
            self.backoff = self.interval
            self.next_query = min(self.next_query, time.monotonic() + self.interval)
        entry.waiters += 1
        return entry

    def untrack(self, entry: Tracked) -> None:
        entry.waiters -= 1
        if entry.waiters <= 0:
            self.tracked.pop(entry.job_id, None)

    async def next_news(self, entry: Tracked) -> None:
        """Return once a round has news about ``entry`` (or a query covered it)."""
        while not entry.news:
            if self.driving:
                await self.round_done.wait()
                continue
            self.driving = True
            try:
                await self._round()
            finally:
                self.driving = False
                done, self.round_done = self.round_done, anyio.Event()
                done.set()
        entry.news = False

    async def _round(self) -> None:
        tick = FILE_TICK * max(1.0, len(self.tracked) / 100)
        now = time.monotonic()
        await anyio.sleep(max(0.0, min(tick, self.next_query - now)))
        for entry in list(self.tracked.values()):
            if entry.outcome.exists():
                entry.news = True
        if time.monotonic() >= self.next_query:
            await self.query(list(self.tracked.values()))

    async def query(self, entries: Iterable[Tracked]) -> None:
        """One squeue call (per chunk) for ``entries``; news for those that changed."""
        entries = list(entries)
        if not entries:
            return
        self.queries += 1
        try:
            listed = await squeue(array_base(e.job_id) for e in entries)
        except QueueUnavailable as exc:
            log.warning("Slurm queue not readable, trying again later: %s", exc)
            self._schedule(changed=False)
            return
        answered = time.monotonic()
        changed = False
        for entry in entries:
            new = listed.get(entry.job_id)
            if entry.seen_at is None or new != entry.entry:
                changed = True
                entry.news = True
            entry.entry, entry.seen_at = new, answered
        self._schedule(changed=changed)

    async def lookup(self, job_id: str) -> QueueEntry | None:
        """What the queue says about ``job_id`` now (None: not listed).

        A tracked job asked about within ``interval`` is answered from the last
        round. Concurrent lookups (many handles refreshed at once) share one
        squeue call. Raises :class:`QueueUnavailable` when squeue fails.
        """
        known = self.tracked.get(job_id)
        fresh = known is not None and known.seen_at is not None
        if fresh and known and time.monotonic() - (known.seen_at or 0.0) < self.interval:
            return known.entry
        slot = _Lookup(job_id)
        self.asked.append(slot)
        while not slot.answered:
            if self.looking:
                await self.looked.wait()
                continue
            self.looking = True
            try:
                await anyio.lowlevel.checkpoint()  # let the other refreshes of this moment join
                batch, self.asked = self.asked, []
                self.queries += 1
                try:
                    listed = await squeue(array_base(s.job_id) for s in batch)
                except QueueUnavailable as exc:
                    for asked in batch:
                        asked.failure, asked.answered = exc, True
                else:
                    for asked in batch:
                        asked.entry, asked.answered = listed.get(asked.job_id), True
            finally:
                self.looking = False
                done, self.looked = self.looked, anyio.Event()
                done.set()
        if slot.failure is not None:
            raise slot.failure
        return slot.entry

    def _schedule(self, *, changed: bool) -> None:
        if changed or self.backoff <= 0:
            self.backoff = self.interval
        else:
            self.backoff = min(self.interval_max, self.backoff * 1.5)
        self.next_query = time.monotonic() + self.backoff


@dataclass
class _Lookup:
    job_id: str
    answered: bool = False
    entry: QueueEntry | None = None
    failure: QueueUnavailable | None = None


_watchers: weakref.WeakKeyDictionary[object, Watcher] = weakref.WeakKeyDictionary()


def watcher(interval: float, interval_max: float) -> Watcher:
    """This event loop's watcher (made on first use, dropped when nothing is tracked)."""
    token = loop_key()
    found = _watchers.get(token)
    if found is None:
        # Its first query one interval from now: whoever made it has just asked.
        found = _watchers[token] = Watcher(
            interval, interval_max, next_query=time.monotonic() + interval
        )
    else:
        found.interval = min(found.interval, interval)
        found.interval_max = min(found.interval_max, interval_max)
    return found


def release(token_watcher: Watcher) -> None:
    """Forget the loop's watcher once it tracks nothing (its settings start afresh)."""
    if not token_watcher.tracked and not token_watcher.asked and not token_watcher.looking:
        for token, known in list(_watchers.items()):
            if known is token_watcher:
                del _watchers[token]
