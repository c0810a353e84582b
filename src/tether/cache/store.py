"""The cache store contract: entries by key, blobs beside them, in-flight claims.

A store keeps, per cache key, one :class:`CacheEntry`: the recorded ``RunResult``
(with file paths relative to the run folder) and the files to restore (stdout,
stderr, outputs) as content-addressed blobs. It also keeps *claims*: which process
is running a key right now, and that run's saved handle record, so that identical
submissions elsewhere share the run instead of starting another.

Methods are synchronous (stores are files and SQLite); :class:`CachedBackend` calls
them in worker threads. Third-party stores subclass :class:`CacheStore` and register
under the ``tether.stores`` entry-point group.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from .. import _html
from ._blobs import BlobDir

#: Blobs younger than this are never collected: a writer may not have recorded them yet.
BLOB_GRACE = 600.0


@dataclass(frozen=True)
class StoredFile:
    """One file of an entry: its path in the run folder and its blob."""

    path: str
    digest: str
    size: int
    mtime_ns: int


@dataclass
class CacheEntry:
    """A recorded run: its result (paths relative to the run folder) and its files."""

    key: str
    backend: str
    name: str
    result: dict[str, Any]
    files: list[StoredFile] = field(default_factory=list)
    created: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.time)
    hits: int = 0

    @property
    def size(self) -> int:
        """Bytes of the entry's files (blobs shared with other entries count in each)."""
        return sum(f.size for f in self.files)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form (also what stores write)."""
        data = asdict(self)
        data["size"] = self.size
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CacheEntry:
        """Rebuild from :meth:`to_json`."""
        files = [StoredFile(**f) for f in data.get("files", [])]
        fields = {k: v for k, v in data.items() if k not in ("files", "size")}
        return cls(files=files, **fields)


@dataclass(frozen=True)
class Claim:
    """Who runs a key right now, since when, and (once submitted) its handle record."""

    owner: str
    claimed: float
    record: dict[str, Any] | None


@dataclass(frozen=True)
class CacheStats:
    """What a store holds."""

    path: str
    entries: int
    size: int
    blobs: int
    blob_size: int
    in_flight: int

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)

    def _repr_html_(self) -> str:
        return _html.cache_stats_html(self)


class CacheStore(ABC):
    """Where cache entries, their blobs and in-flight claims live."""

    #: Name under the ``tether.stores`` entry-point group.
    kind: ClassVar[str]

    def __init__(self, blobs: Path) -> None:
        self.blobs = BlobDir(blobs)

    @property
    @abstractmethod
    def location(self) -> Path:
        """The store's file or folder."""

    def spec(self) -> dict[str, str]:
        """What rebuilds this store in another process (saved in handle records)."""
        return {"type": self.kind, "path": str(self.location)}

    # -- entries -------------------------------------------------------------------

    @abstractmethod
    def get(self, key: str, *, touch: bool = True) -> CacheEntry | None:
        """The entry for ``key``; ``touch`` marks it used (LRU) and counts a hit."""

    @abstractmethod
    def put(self, entry: CacheEntry, *, replace: bool = False, owner: str | None = None) -> bool:
        """Record ``entry`` (its blobs must be stored already); False if one existed and
        ``replace`` is off: the first recording wins. With ``owner``, drop that owner's
        claim on the key too, in the same step where the store can (a recorder killed
        right after recording must not leave its claim behind)."""

    @abstractmethod
    def delete(self, key: str) -> bool:
        """Forget the entry for ``key``; True if there was one."""

    @abstractmethod
    def entries(self) -> list[CacheEntry]:
        """Every entry, least recently used first."""

    @abstractmethod
    def referenced(self) -> set[str]:
        """Digests of every blob some entry uses."""

    # -- in-flight claims ------------------------------------------------------------

    @abstractmethod
    def claim(self, key: str, owner: str) -> Claim | None:
        """Claim ``key`` for ``owner``: None when it is now ours, else the current claim."""

    @abstractmethod
    def set_record(self, key: str, owner: str, record: dict[str, Any]) -> None:
        """Attach the running handle's record to ``owner``'s claim."""

    @abstractmethod
    def release(self, key: str, owner: str | None = None) -> None:
        """Drop the claim on ``key`` (only ``owner``'s, when given)."""

    @abstractmethod
    def steal(self, key: str, old: Claim, owner: str) -> bool:
        """Replace the claim ``old`` (its owner died) by ``owner``'s; False if it changed."""

    @abstractmethod
    def claims(self) -> int:
        """How many keys are claimed now."""

    # -- housekeeping ----------------------------------------------------------------

    def collect_blobs(self) -> int:
        """Delete blobs no entry uses (older than :data:`BLOB_GRACE`); return bytes freed."""
        return self.collect()[0]

    def collect(self) -> tuple[int, int, int]:
        """Delete blobs no entry uses, older than :data:`BLOB_GRACE` (a writer may not
        have recorded a younger one yet); return (bytes freed, unused blobs kept, their
        bytes)."""
        used = self.referenced()
        limit = time.time() - BLOB_GRACE
        freed = kept = kept_size = 0
        for digest in self.blobs.digests() - used:
            try:
                stat = self.blobs.path(digest).stat()
                if stat.st_mtime < limit:
                    freed += self.blobs.remove(digest)
                else:
                    kept, kept_size = kept + 1, kept_size + stat.st_size
            except FileNotFoundError:
                continue
        self.blobs.sweep_temps()
        return freed, kept, kept_size

    def blob_usage(self) -> tuple[int, int]:
        """(number of blobs, their bytes)."""
        count = size = 0
        for digest in self.blobs.digests():
            try:
                size += self.blobs.path(digest).stat().st_size
            except FileNotFoundError:
                continue
            count += 1
        return count, size

    def stats(self) -> CacheStats:
        """Entries, bytes, blobs and claims."""
        entries = self.entries()
        blobs, blob_size = self.blob_usage()
        return CacheStats(
            path=str(self.location),
            entries=len(entries),
            size=sum(e.size for e in entries),
            blobs=blobs,
            blob_size=blob_size,
            in_flight=self.claims(),
        )

    def clear(self) -> int:
        """Forget every entry and delete every blob; return how many entries went."""
        entries = self.entries()
        for entry in entries:
            self.delete(entry.key)
        for digest in self.blobs.digests():
            self.blobs.remove(digest)
        return len(entries)

    def prune(self, max_size: int) -> int:
        """Forget least recently used entries until their blobs fit ``max_size`` bytes;
        then delete unused blobs. Return how many entries went."""
        removed = 0
        entries = self.entries()
        sizes: dict[str, int] = {}
        for entry in entries:
            for f in entry.files:
                sizes[f.digest] = f.size
        total = sum(sizes.values())
        users: dict[str, int] = {}
        for entry in entries:
            for digest in {f.digest for f in entry.files}:
                users[digest] = users.get(digest, 0) + 1
        for entry in entries:
            if total <= max_size:
                break
            self.delete(entry.key)
            removed += 1
            for digest in {f.digest for f in entry.files}:
                users[digest] -= 1
                if users[digest] == 0:
                    total -= sizes[digest]
        self.collect_blobs()
        return removed
