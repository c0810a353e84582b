"""A store of plain files: one JSON file per entry and per claim, blobs beside them.

Every write is a temporary file renamed into place (entries) or an exclusive create
(claims), so readers never see half a file and a crash loses nothing recorded.
An entry's last use is its file's mtime. Suited to small caches and shared
filesystems; the SQLite store is faster with many entries.

Safe on NFS: nothing here takes a lock (``fcntl``, ``flock`` and ``lockf`` locks are
unreliable over NFS, which is what makes SQLite unsafe there). First-writer-wins
creates are a hard link of a finished temporary file (``_files.link_once``, which
also recognises a retransmitted NFSv2/v3 ``link()`` that reports EEXIST although it
succeeded); replacements are ``os.replace`` renames, atomic on NFS too.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar

from .._files import link_once, make_private_dir, write_atomic
from .store import CacheEntry, CacheStore, Claim


class DirectoryStore(CacheStore):
    """Cache entries as files under ``root`` (``entries/``, ``inflight/``, ``blobs/``).

    The store for a folder that several machines share (NFS, a cluster's home or
    scratch file system): it takes no locks, creates files first-writer-wins by
    hard links (an NFSv2/v3 retransmitted ``link()`` that reports EEXIST although
    it succeeded is recognised by the temporary file's link count) and replaces
    them by atomic renames. Processes on any machine that use the same ``root``
    share entries, claims and blobs.
    """

    kind: ClassVar[str] = "directory"

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()
        super().__init__(self.root / "blobs")

    @property
    def location(self) -> Path:
        """The store's folder."""
        return self.root

    def __repr__(self) -> str:
        return f"DirectoryStore({str(self.root)!r})"

    def _entry_path(self, key: str) -> Path:
        return self.root / "entries" / key[:2] / f"{key}.json"

    def _claim_path(self, key: str) -> Path:
        return self.root / "inflight" / f"{key}.json"

    # -- entries -------------------------------------------------------------------

    def _read(self, path: Path) -> CacheEntry | None:
        try:
            data = json.loads(path.read_text())
            entry = CacheEntry.from_json(data)
            entry.last_used = path.stat().st_mtime
        except (OSError, ValueError, TypeError, KeyError):
            return None
        return entry

    def get(self, key: str, *, touch: bool = True) -> CacheEntry | None:
        """The entry for ``key``; ``touch`` counts a hit and makes it the most recently
        used (its file is rewritten, so its mtime is the last use)."""
        path = self._entry_path(key)
        entry = self._read(path)
        if entry is not None and touch:
            entry.hits += 1
            entry.last_used = time.time()
            with contextlib.suppress(OSError):
                write_atomic(path, json.dumps(entry.to_json()).encode())
        return entry

    def put(self, entry: CacheEntry, *, replace: bool = False, owner: str | None = None) -> bool:
        """Write the entry's file atomically; the first one wins unless ``replace``.
        ``owner``'s claim is dropped right after (files have no transactions)."""
        recorded = self._put(entry, replace=replace)
        if owner is not None:
            self.release(entry.key, owner)
        return recorded

    def _put(self, entry: CacheEntry, *, replace: bool) -> bool:
        path = self._entry_path(entry.key)
        make_private_dir(path.parent)  # owner-only, with the parents it makes
        data = json.dumps(entry.to_json()).encode()
        if replace:
            write_atomic(path, data)
            return True
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            if link_once(tmp, path):  # the first recording wins
                return True
            if self._read(path) is not None:
                return False
            write_atomic(path, data)  # the existing file is unreadable: replace it
        finally:
            os.unlink(tmp)
        return True

    def delete(self, key: str) -> bool:
        """Remove the entry's file."""
        try:
            self._entry_path(key).unlink()
        except FileNotFoundError:
            return False
        return True

    def entries(self) -> list[CacheEntry]:
        """Every entry, least recently used first."""
        found = [self._read(p) for p in self.root.glob("entries/??/*.json")]
        entries = [e for e in found if e is not None]
        return sorted(entries, key=lambda e: (e.last_used, e.key))

    def referenced(self) -> set[str]:
        """Digests some entry uses."""
        return {f.digest for entry in self.entries() for f in entry.files}

    # -- claims --------------------------------------------------------------------

    def _read_claim(self, key: str) -> Claim | None:
        try:
            data = json.loads(self._claim_path(key).read_text())
            return Claim(str(data["owner"]), float(data["claimed"]), data.get("record"))
        except (OSError, ValueError, KeyError):
            return None

    def claim(self, key: str, owner: str) -> Claim | None:
        """Create the claim file exclusively; None when it is ours now."""
        path = self._claim_path(key)
        make_private_dir(path.parent)  # owner-only, with the parents it makes
        body = json.dumps({"owner": owner, "claimed": time.time(), "record": None}).encode()
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(body)  # a full disk fails here: no temp file is left
            if link_once(tmp, path):
                return None
        finally:
            os.unlink(tmp)
        # A claim that vanished between the two looks: try again on the next call.
        return self._read_claim(key) or Claim("", 0.0, None)

    def set_record(self, key: str, owner: str, record: dict[str, Any]) -> None:
        """Rewrite ``owner``'s claim with the handle record (atomically)."""
        current = self._read_claim(key)
        if current is None or current.owner != owner:
            return
        body = {"owner": owner, "claimed": current.claimed, "record": record}
        write_atomic(self._claim_path(key), json.dumps(body).encode())

    def release(self, key: str, owner: str | None = None) -> None:
        """Remove the claim file (only ``owner``'s, when given)."""
        current = self._read_claim(key)
        if current is not None and (owner is None or current.owner == owner):
            with contextlib.suppress(FileNotFoundError):
                self._claim_path(key).unlink()

    def steal(self, key: str, old: Claim, owner: str) -> bool:
        """Replace a dead owner's claim (best effort: files have no compare-and-swap)."""
        current = self._read_claim(key)
        if current != old:
            return False
        body = {"owner": owner, "claimed": time.time(), "record": None}
        write_atomic(self._claim_path(key), json.dumps(body).encode())
        return self._read_claim(key) is not None and self._read_claim(key).owner == owner  # type: ignore[union-attr]

    def claims(self) -> int:
        """How many claim files there are."""
        return len(list(self.root.glob("inflight/*.json")))
