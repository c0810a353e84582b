"""Proof that a pickle in a run folder is tether's own before anything unpickles it.

A record (handle file) can come from anywhere and names a run folder; a pickle in
that folder must not run code because a crafted record pointed at it. Whoever
writes an outcome pickle for tether (the call worker, the cache when it restores
a hit) also writes ``<file>.sig``: an HMAC-SHA256 of the bytes keyed with a secret
that only this user can read (``<state home>/secret.key``, 0600, made once). A
reader unpickles only bytes whose file and folder belong to this user, are not
group- or world-writable, and whose signature matches.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import stat
from pathlib import Path

from ._files import make_private_dir, state_home

SUFFIX = ".sig"


def _key_path() -> Path:
    return state_home() / "secret.key"


def key() -> bytes:
    """This user's signing key, created on first use (racing creators agree on one)."""
    path = _key_path()
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    make_private_dir(path.parent)
    # unique per creator: threads of one process race here too
    tmp = path.with_name(f".secret.key.{os.getpid()}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, os.urandom(32))
        os.fsync(fd)
    finally:
        os.close(fd)
    with contextlib.suppress(FileExistsError):
        os.link(tmp, path)  # the first creator wins; the others read its key
    os.unlink(tmp)
    return path.read_bytes()


def sign(data: bytes) -> str:
    """The hex HMAC of ``data`` under this user's key."""
    return hmac.new(key(), data, hashlib.sha256).hexdigest()


def seal(path: Path) -> None:
    """Write ``path``'s signature beside it (``<path>.sig``, 0600)."""
    signature = sign(path.read_bytes()).encode()
    sig = path.with_name(path.name + SUFFIX)
    fd = os.open(sig, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, signature)
    finally:
        os.close(fd)


def _owned(st: os.stat_result) -> bool:
    return st.st_uid == os.geteuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def trusted_bytes(path: Path) -> bytes | str:
    """The bytes of ``path`` if they are proven tether's own, else why not (one line)."""
    try:
        folder = os.stat(path.parent, follow_symlinks=False)
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        return f"cannot open '{path}': {exc.strerror or exc}"
    try:
        if not (_owned(folder) and _owned(os.fstat(fd)) and stat.S_ISDIR(folder.st_mode)):
            return f"'{path}' or its folder is not this user's own (owner or mode)"
        with os.fdopen(os.dup(fd), "rb") as handle:
            data = handle.read()
    finally:
        os.close(fd)
    try:
        expected = (path.with_name(path.name + SUFFIX)).read_bytes().decode()
    except (OSError, UnicodeDecodeError):
        return f"'{path}' has no valid signature: not written by tether for this user"
    if not hmac.compare_digest(expected, sign(data)):
        return f"the signature of '{path}' does not match: not written by tether for this user"
    return data
