"""Store failures told apart: a full disk is not a damaged store.

SQLite says ``database or disk is full`` (``SQLITE_FULL``) and files say ``ENOSPC``
(or ``EDQUOT``, over quota); both mean "free some space", never "delete the store".
"""

from __future__ import annotations

import errno
import sqlite3

#: errno values of a write that found no room.
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_disk_full(exc: BaseException) -> bool:
    """True when ``exc`` (or what it was raised from) says the disk or quota is full."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _FULL_ERRNOS:
            return True
        if isinstance(current, sqlite3.Error):
            code = getattr(current, "sqlite_errorcode", None)
            if code == sqlite3.SQLITE_FULL or "database or disk is full" in str(current):
                return True
        current = current.__cause__ or current.__context__
    return False


def disk_full(where: object, exc: BaseException) -> OSError:
    """An ``ENOSPC`` error naming ``where`` and the fix, to raise ``from exc``."""
    return OSError(
        errno.ENOSPC,
        f"no space left on device for cache store '{where}' ({exc}): the store is not "
        "damaged; free space on its disk or choose a store on another one",
    )


def reason(exc: BaseException) -> str:
    """One line saying why a cache write failed (``no space left on device`` first)."""
    if is_disk_full(exc):
        return "no space left on device"
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
