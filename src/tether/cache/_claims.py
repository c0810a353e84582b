"""Claim owner ids: who holds a key, whether they still live, which run they start.

An owner id is ``host|boot|pid|start ticks|nonce`` and, when the inner backend can
find a run by its id (the ``find`` capability), ``|run_id``: the id the owner's inner
run gets. It is in the claim from the start, so whoever takes over the claim of an
owner that died asks the inner backend for that run before starting another one:
a submitter killed between starting its run and recording it in the claim does not
make the job run twice.
"""

from __future__ import annotations

import os
import secrets
import socket
from functools import cache
from pathlib import Path

from .. import _proc

#: A claim with no handle record yet (its owner is between claiming and submitting)
#: is taken over after this long even if the owner looks alive (another machine).
PENDING_LIMIT = 120.0


@cache
def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def new_owner(run_id: str | None = None) -> str:
    """This process's claim owner id: host, boot, pid, start ticks, a nonce, and the
    inner run's id when it is chosen before submitting (see :func:`planned_run`)."""
    pid = os.getpid()
    ticks = _proc.start_ticks(pid)
    owner = f"{socket.gethostname()}|{_boot_id()}|{pid}|{ticks}|{secrets.token_hex(4)}"
    return owner if run_id is None else f"{owner}|{run_id}"


def _parts(owner: str) -> list[str] | None:
    parts = owner.split("|")
    return parts if len(parts) in (5, 6) else None


def owner_alive(owner: str) -> bool:
    """False when the owner's process is known to be gone (same host and boot only)."""
    parts = _parts(owner)
    if parts is None:
        return False
    host, boot, pid, ticks = parts[:4]
    if host != socket.gethostname() or boot != _boot_id():
        return True  # cannot tell from here: PENDING_LIMIT decides
    try:
        return _proc.is_running(int(pid), None if ticks == "None" else int(ticks))
    except ValueError:
        return False


def planned_run(owner: str) -> str | None:
    """The inner run id ``owner`` submits (or submitted) its run under, if it chose one."""
    parts = _parts(owner)
    if parts is None or len(parts) < 6 or not parts[5]:
        return None
    return parts[5]
