"""``tether cache``: what the cache store holds, and keeping it in bounds."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import anyio.to_thread

from ..cache import CacheEntry, CacheStore, DirectoryStore, SQLiteStore
from ..cache.store import BLOB_GRACE
from ..errors import ConfigError
from ..job import parse_memory
from ._ls import age
from ._render import table, write_lines

EXIT_OK = 0


def open_store(path: Path | None) -> CacheStore:
    """The store at ``path`` (a folder: directory store; else SQLite), or the default."""
    if path is None:
        return SQLiteStore.default()
    if path.is_dir():
        return DirectoryStore(path)
    if path.exists() or path.parent.is_dir():
        return SQLiteStore(path)
    raise ConfigError(f"Cache store '{path}' does not exist: check the path.")


def size(count: float) -> str:
    """Bytes as ``512 B``, ``3.4 MB``."""
    for unit in ("B", "kB", "MB", "GB"):
        if count < 1000:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} TB"


def _find(store: CacheStore, prefix: str) -> CacheEntry:
    entry = store.get(prefix, touch=False)
    if entry is not None:
        return entry
    matches = [e for e in store.entries() if e.key.startswith(prefix)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise ConfigError(f"No cache entry with key {prefix!r}: see `tether cache ls`.")
    raise ConfigError(f"Key prefix {prefix!r} matches {len(matches)} entries: give more of it.")


async def stats(args: argparse.Namespace) -> int:
    """Entries, sizes and runs in flight."""
    store = open_store(args.store)
    info = await anyio.to_thread.run_sync(store.stats)
    if args.json:
        write_lines(sys.stdout, [json.dumps(info.to_json(), indent=2)])
        return EXIT_OK
    rows = [
        ["store", info.path],
        ["entries", str(info.entries)],
        ["recorded size", size(info.size)],
        ["blobs on disk", f"{info.blobs} ({size(info.blob_size)})"],
        ["runs in flight", str(info.in_flight)],
    ]
    write_lines(sys.stdout, table(rows))
    return EXIT_OK


async def ls(args: argparse.Namespace) -> int:
    """Every entry, least recently used first."""
    store = open_store(args.store)
    entries = await anyio.to_thread.run_sync(store.entries)
    if args.json:
        write_lines(sys.stdout, [json.dumps([e.to_json() for e in entries], indent=2)])
        return EXIT_OK
    if not entries:
        write_lines(sys.stderr, [f"tether: the cache at {store.location} is empty"])
        return EXIT_OK
    now = time.time()
    rows = [["KEY", "NAME", "BACKEND", "STATE", "SIZE", "HITS", "LAST USED"]]
    for e in entries:
        state = str(e.result.get("state", "?"))
        rows.append(
            [
                e.key[:12],
                e.name,
                e.backend,
                state,
                size(e.size),
                str(e.hits),
                age(now - e.last_used),
            ]
        )
    write_lines(sys.stdout, table(rows))
    return EXIT_OK


async def show(args: argparse.Namespace) -> int:
    """One entry (a unique key prefix is enough), as JSON."""
    store = open_store(args.store)
    entry = await anyio.to_thread.run_sync(_find, store, args.key)
    write_lines(sys.stdout, [json.dumps(entry.to_json(), indent=2)])
    return EXIT_OK


async def clear(args: argparse.Namespace) -> int:
    """Forget every entry and delete every blob."""
    store = open_store(args.store)
    removed = await anyio.to_thread.run_sync(store.clear)
    write_lines(sys.stderr, [f"tether: removed {removed} cache entries from {store.location}"])
    return EXIT_OK


async def prune(args: argparse.Namespace) -> int:
    """Drop least recently used entries beyond ``--max-size``; delete unused blobs."""
    store = open_store(args.store)
    if args.max_size is None:
        freed, kept, kept_size = await anyio.to_thread.run_sync(store.collect)
        lines = [f"tether: freed {size(freed)} of unused blobs"]
        if kept:
            minutes = f"{BLOB_GRACE / 60:g} minutes"
            lines.append(
                f"tether: kept {kept} unused blob{'' if kept == 1 else 's'} "
                f"({size(kept_size)}) younger than {minutes}: a run may still be recording "
                "them; prune again later to free them"
            )
        write_lines(sys.stderr, lines)
        return EXIT_OK
    try:
        limit = parse_memory(args.max_size)
    except ValueError as exc:
        raise ConfigError(f"--max-size: {exc}") from None
    removed = await anyio.to_thread.run_sync(store.prune, limit)
    info = await anyio.to_thread.run_sync(store.stats)
    write_lines(
        sys.stderr,
        [
            f"tether: removed {removed} least recently used entries; {info.entries} left, "
            f"{size(info.size)} (limit {size(limit)})"
        ],
    )
    return EXIT_OK
