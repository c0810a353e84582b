"""Caching of runs: ``CachedBackend`` wraps any backend; stores keep what ran.

See ``docs/cache.md``. The pieces: :mod:`.key` (what a key is made of),
:mod:`.store` (the store contract), :mod:`.sqlite_store` (the embedded default),
:mod:`.directory_store` (plain files), :mod:`.backend` (the wrapper and its handle).
"""

from __future__ import annotations

from .backend import CachedBackend, CachedConfig, CachedRunHandle, store_from_spec
from .directory_store import DirectoryStore
from .key import CACHE_FORMAT, KeyFunction, default_key
from .sqlite_store import SQLiteStore
from .store import CacheEntry, CacheStats, CacheStore, Claim, StoredFile

__all__ = [
    "CACHE_FORMAT",
    "CacheEntry",
    "CacheStats",
    "CacheStore",
    "CachedBackend",
    "CachedConfig",
    "CachedRunHandle",
    "Claim",
    "DirectoryStore",
    "KeyFunction",
    "SQLiteStore",
    "StoredFile",
    "default_key",
    "store_from_spec",
]
