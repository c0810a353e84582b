"""The embedded default store: one SQLite file, blobs in a folder beside it.

Safe with many processes and threads: WAL journal, a 30 s busy timeout, one
connection per thread, and every change in a single ``BEGIN IMMEDIATE``
transaction, so a process killed mid-write leaves the old state or the new one.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

from .._files import cache_home, make_private_dir
from ..errors import ConfigError
from ._faults import disk_full, is_disk_full
from .store import CacheEntry, CacheStore, Claim

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY,
    backend TEXT NOT NULL,
    name TEXT NOT NULL,
    created REAL NOT NULL,
    last_used REAL NOT NULL,
    hits INTEGER NOT NULL,
    size INTEGER NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_by_use ON entries (last_used);
CREATE TABLE IF NOT EXISTS refs (
    key TEXT NOT NULL, digest TEXT NOT NULL, PRIMARY KEY (key, digest)
);
CREATE INDEX IF NOT EXISTS refs_by_digest ON refs (digest);
CREATE TABLE IF NOT EXISTS inflight (
    key TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    claimed REAL NOT NULL,
    record TEXT
);
"""
_COLUMNS = "key, backend, name, created, last_used, hits, data"
#: Bytes kept in ``<store>.reserve``, freed to release claims when the disk is full.
RESERVE_SIZE = 256 * 1024


class SQLiteStore(CacheStore):
    """Cache entries in one SQLite file (default ``~/.cache/tether/cache.sqlite``)."""

    kind: ClassVar[str] = "sqlite"

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path).expanduser() if path is not None else default_path()
        super().__init__(self.path.with_name(self.path.name + ".blobs"))
        self._local = threading.local()
        self._reserve = self.path.with_name(self.path.name + ".reserve")

    @classmethod
    def default(cls) -> SQLiteStore:
        """The store in tether's cache folder (``$XDG_CACHE_HOME/tether``)."""
        return cls(default_path())

    @property
    def location(self) -> Path:
        """The SQLite file."""
        return self.path

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r})"

    # -- connections ---------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._open()
            self._local.connection = connection
        return connection

    def _open(self) -> sqlite3.Connection:
        """Connect, switch to WAL and create the schema. Switching the journal mode
        takes a lock SQLite's busy handler does not wait for, so a new file opened by
        many processes at once is retried here (up to the same 30 s)."""
        deadline = time.monotonic() + 30.0
        delay = 0.005
        while True:
            try:
                # Owner-only: the store holds pickled Call outcomes (unpickled on hits).
                make_private_dir(self.path.parent)
                # Create it with that mode, but never open (and close) an existing one:
                # closing any descriptor of the file drops every POSIX lock this
                # process's connections hold on it, which corrupts the database.
                with contextlib.suppress(FileExistsError):
                    os.close(os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
                connection = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
                try:
                    connection.execute("PRAGMA busy_timeout = 30000")
                    connection.execute("PRAGMA journal_mode = WAL")
                    connection.execute("PRAGMA synchronous = NORMAL")
                    with _transaction(connection):
                        _create(connection)
                except BaseException:
                    connection.close()
                    raise
                self._keep_reserve()
                return connection
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise self._unusable(exc) from exc
                time.sleep(delay)
                delay = min(delay * 2, 0.25)
            except (sqlite3.DatabaseError, OSError) as exc:
                raise self._unusable(exc) from exc

    def _unusable(self, exc: Exception) -> Exception:
        """The error to raise for a store that cannot be opened: a full disk is an
        ``ENOSPC`` :class:`OSError` (the file is sound), anything else a config error."""
        if is_disk_full(exc):
            return disk_full(self.path, exc)
        return ConfigError(
            f"Cache store '{self.path}' cannot be opened: {exc}; delete it or choose another path."
        )

    def _keep_reserve(self) -> None:
        """Make sure the reserve file is there: room, kept beside the database, that
        :meth:`release` frees when the disk is full (best effort: none on a full disk)."""
        if self._reserve.exists():
            return
        try:
            fd = os.open(self._reserve, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except OSError:
            return
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(bytes(RESERVE_SIZE))
        except OSError:
            with contextlib.suppress(OSError):
                self._reserve.unlink()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction; a full disk rolls it back and raises an
        ``ENOSPC`` :class:`OSError` (not ``sqlite3.OperationalError``)."""
        connection = self._connection()
        try:
            with _transaction(connection):
                yield connection
        except sqlite3.Error as exc:
            if is_disk_full(exc):
                raise disk_full(self.path, exc) from exc
            raise

    # -- entries -------------------------------------------------------------------

    def get(self, key: str, *, touch: bool = True) -> CacheEntry | None:
        """The entry for ``key``; ``touch`` marks it used and counts a hit (one statement)."""
        connection = self._connection()
        row = None
        if touch:
            try:
                row = connection.execute(
                    f"UPDATE entries SET last_used = ?, hits = hits + 1 WHERE key = ? "
                    f"RETURNING {_COLUMNS}",
                    (time.time(), key),
                ).fetchone()
            except sqlite3.OperationalError as exc:
                if not is_disk_full(exc):
                    raise
                touch = False  # a full disk cannot count the hit; it is a hit still
        if not touch:
            row = connection.execute(
                f"SELECT {_COLUMNS} FROM entries WHERE key = ?", (key,)
            ).fetchone()
        return None if row is None else _entry(row)

    def put(self, entry: CacheEntry, *, replace: bool = False, owner: str | None = None) -> bool:
        """Record ``entry`` (and drop ``owner``'s claim) in one transaction; the first
        recording wins unless ``replace``."""
        data = json.dumps({"result": entry.result, "files": [vars(f) for f in entry.files]})
        with self._write() as db:
            if owner is not None:
                db.execute("DELETE FROM inflight WHERE key = ? AND owner = ?", (entry.key, owner))
            exists = db.execute("SELECT 1 FROM entries WHERE key = ?", (entry.key,)).fetchone()
            if exists and not replace:
                return False
            db.execute("DELETE FROM refs WHERE key = ?", (entry.key,))
            db.execute(
                "INSERT OR REPLACE INTO entries (key, backend, name, created, last_used, hits, "
                "size, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    entry.key,
                    entry.backend,
                    entry.name,
                    entry.created,
                    entry.last_used,
                    entry.hits,
                    entry.size,
                    data,
                ),
            )
            db.executemany(
                "INSERT OR IGNORE INTO refs (key, digest) VALUES (?, ?)",
                [(entry.key, f.digest) for f in entry.files],
            )
        self._keep_reserve()  # used up by a full disk before: there is room again
        return True

    def delete(self, key: str) -> bool:
        """Forget the entry for ``key``."""
        with self._write() as db:
            db.execute("DELETE FROM refs WHERE key = ?", (key,))
            return db.execute("DELETE FROM entries WHERE key = ?", (key,)).rowcount > 0

    def entries(self) -> list[CacheEntry]:
        """Every entry, least recently used first."""
        rows = self._connection().execute(f"SELECT {_COLUMNS} FROM entries ORDER BY last_used, key")
        return [_entry(row) for row in rows]

    def referenced(self) -> set[str]:
        """Digests some entry uses."""
        rows = self._connection().execute("SELECT DISTINCT digest FROM refs")
        return {str(row[0]) for row in rows}

    def integrity(self) -> str:
        """SQLite's ``PRAGMA integrity_check`` answer ("ok" when sound)."""
        row = self._connection().execute("PRAGMA integrity_check").fetchone()
        return str(row[0])

    # -- claims --------------------------------------------------------------------

    def claim(self, key: str, owner: str) -> Claim | None:
        """Claim ``key``: None when it is ours now, else who holds it."""
        with self._write() as db:
            row = db.execute(
                "SELECT owner, claimed, record FROM inflight WHERE key = ?", (key,)
            ).fetchone()
            if row is not None:
                return _claim(row)
            db.execute(
                "INSERT INTO inflight (key, owner, claimed, record) VALUES (?, ?, ?, NULL)",
                (key, owner, time.time()),
            )
        return None

    def set_record(self, key: str, owner: str, record: dict[str, Any]) -> None:
        """Attach the running handle's record to ``owner``'s claim."""
        with self._write() as db:
            db.execute(
                "UPDATE inflight SET record = ? WHERE key = ? AND owner = ?",
                (json.dumps(record), key, owner),
            )

    def release(self, key: str, owner: str | None = None) -> None:
        """Drop the claim on ``key`` (only ``owner``'s, when given).

        On a full disk the WAL may have no room for even this: the store's reserve
        file (see :meth:`_keep_reserve`) is deleted to make room, and it is tried again,
        so an ended run never leaves its claim behind for lack of a few pages.
        """
        try:
            self._release(key, owner)
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            with contextlib.suppress(FileNotFoundError):
                self._reserve.unlink()
            self._release(key, owner)

    def _release(self, key: str, owner: str | None) -> None:
        with self._write() as db:
            if owner is None:
                db.execute("DELETE FROM inflight WHERE key = ?", (key,))
            else:
                db.execute("DELETE FROM inflight WHERE key = ? AND owner = ?", (key, owner))

    def steal(self, key: str, old: Claim, owner: str) -> bool:
        """Take over a dead owner's claim, unless it changed meanwhile."""
        with self._write() as db:
            return (
                db.execute(
                    "UPDATE inflight SET owner = ?, claimed = ?, record = NULL "
                    "WHERE key = ? AND owner = ? AND claimed = ?",
                    (owner, time.time(), key, old.owner, old.claimed),
                ).rowcount
                > 0
            )

    def claims(self) -> int:
        """How many keys are claimed now."""
        row = self._connection().execute("SELECT COUNT(*) FROM inflight").fetchone()
        return int(row[0])


def default_path() -> Path:
    """``$TETHER_CACHE_STORE``, else ``$XDG_CACHE_HOME/tether/cache.sqlite``
    (``~/.cache/tether/cache.sqlite``)."""
    explicit = os.environ.get("TETHER_CACHE_STORE")
    if explicit:
        return Path(explicit).expanduser()
    return cache_home() / "cache.sqlite"


def _create(connection: sqlite3.Connection) -> None:
    for statement in _SCHEMA.split(";"):
        if statement.strip():
            connection.execute(statement)
    row = connection.execute("SELECT value FROM meta WHERE name = 'schema'").fetchone()
    if row is None:
        connection.execute(
            "INSERT INTO meta (name, value) VALUES ('schema', ?)", (str(SCHEMA_VERSION),)
        )
    elif int(row[0]) > SCHEMA_VERSION:
        raise sqlite3.DatabaseError(
            f"schema version {row[0]} is newer than this tether reads ({SCHEMA_VERSION})"
        )


@contextmanager
def _transaction(connection: sqlite3.Connection) -> Iterator[None]:
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield
        connection.execute("COMMIT")
    except BaseException:
        # SQLite may have rolled back already (a full disk does): do not hide why.
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise


def _entry(row: tuple[Any, ...]) -> CacheEntry:
    key, backend, name, created, last_used, hits, data = row
    payload = json.loads(data)
    return CacheEntry.from_json(
        {
            "key": key,
            "backend": backend,
            "name": name,
            "created": created,
            "last_used": last_used,
            "hits": hits,
            "result": payload["result"],
            "files": payload["files"],
        }
    )


def _claim(row: tuple[Any, ...]) -> Claim:
    owner, claimed, record = row
    return Claim(str(owner), float(claimed), None if record is None else json.loads(record))
