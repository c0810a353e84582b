"""Crash-safe small-file writes and the folders tether keeps its data in."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_atomic(path: Path, data: bytes, *, mode: int = 0o600, sync: bool = False) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the whole new one.

    The bytes go to a temporary file in the same folder (created with ``mode``),
    which is then renamed over ``path``; a crash leaves at most a stray temp file,
    never a half-written target.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            if sync:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json_atomic(path: Path, obj: Any, *, sync: bool = False) -> None:
    """Atomically write ``obj`` as JSON, readable by the owner only."""
    write_atomic(path, (json.dumps(obj) + "\n").encode(), sync=sync)


def link_once(tmp: str | os.PathLike[str], target: str | os.PathLike[str]) -> bool:
    """Hard-link the finished file ``tmp`` as ``target`` unless ``target`` exists.

    Returns True if this call created ``target`` (the first of racing creators
    wins; the others get False and must leave its file alone). ``tmp`` must be a
    file of the caller's own, unique to this attempt (a ``mkstemp`` name), and
    stays in place: the caller removes it.

    Safe on NFS: on NFSv2/v3 ``link()`` is not idempotent, so a retransmitted
    request whose first copy succeeded reports EEXIST. As the O_EXCL notes of
    open(2) advise, a link count of 2 on the unique ``tmp`` then means the link
    was ours after all. No lock is taken (POSIX locks over NFS are unreliable).
    """
    try:
        os.link(tmp, target)
    except FileExistsError:
        try:
            return os.stat(tmp).st_nlink == 2
        except OSError:
            return False
    return True


def write_json_once(path: Path, obj: Any) -> bool:
    """Create ``path`` holding ``obj`` as JSON unless it exists; True if this call made it.

    The first of several racing writers wins and the others leave its file alone
    (the complete file appears at once, through a hard link of a finished temp file).
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write((json.dumps(obj) + "\n").encode())
        return link_once(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


#: Largest config, job, pipeline or handle file tether parses (10 MiB); bigger ones are
#: refused before reading, so a huge file fails at once instead of after minutes.
MAX_FILE_SIZE = 10 * 1024 * 1024


def oversize(path: Path, what: str) -> str | None:
    """Why ``path`` is too big to parse (one line), or None when its size is fine."""
    try:
        size = path.stat().st_size
    except OSError:
        return None  # the reader reports a missing or unreadable file itself
    if size <= MAX_FILE_SIZE:
        return None
    return (
        f"{what} file '{path}' is {size} bytes, over the {MAX_FILE_SIZE}-byte limit "
        "(MAX_FILE_SIZE): check that it is the right file."
    )


def read_capped(path: Path, what: str) -> bytes | str:
    """``path``'s bytes, or why not (one line) when it holds more than MAX_FILE_SIZE.

    Reads at most one byte past the limit, so a device (``/dev/zero``) or a file
    that grows after :func:`oversize` looked at it cannot hang tether or fill memory.
    OSErrors (missing, unreadable) are the caller's to report.
    """
    with Path(path).open("rb") as handle:
        # Ask for the size fstat gives (plus one byte, to see growth) rather than the
        # cap: read(n) allocates n bytes up front, 10 MiB for every small record.
        size = os.fstat(handle.fileno()).st_size
        data = handle.read(min(size, MAX_FILE_SIZE) + 1)
        if len(data) > size:  # it grew, or a device (/dev/zero) reports no size
            data += handle.read(MAX_FILE_SIZE + 1 - len(data))
    if len(data) <= MAX_FILE_SIZE:
        return data
    return (
        f"{what} file '{path}' holds more than {MAX_FILE_SIZE} bytes, the limit "
        "(MAX_FILE_SIZE): check that it is the right file."
    )


def make_private_dir(path: Path) -> Path:
    """Create ``path`` and any missing parents with mode 0700, whatever the umask.

    Folders that already exist are left as they are.
    """
    path = Path(path)
    missing: list[Path] = []
    current = path
    while not current.exists():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            continue
        os.chmod(folder, 0o700)  # mkdir's mode is masked by the umask
    return path


def state_home() -> Path:
    """tether's state folder: ``$TETHER_HOME`` or ``$XDG_STATE_HOME/tether``."""
    explicit = os.environ.get("TETHER_HOME")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "tether"


def cache_home() -> Path:
    """tether's cache folder: ``$XDG_CACHE_HOME/tether`` (``~/.cache/tether``)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tether"


def default_runs_dir() -> Path:
    """Where run folders go when a config names none: ``<state home>/runs``."""
    return state_home() / "runs"
