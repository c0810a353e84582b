"""Saved handle records: versioned JSON, written atomically, owner-only.

A record is what ``RunHandle.save`` writes and ``load_handle`` reads::

    {"format": "tether.handle", "version": 1, "backend": "local",
     "run_id": "...", "job": {...}, "config": {...}, "data": {...}}

``data`` is the backend's own part (pids, container ids, job ids). Records never
hold secret values and are never pickles.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ._files import oversize, read_capped, write_json_atomic
from .errors import RecordError, RecordVersionError

FORMAT = "tether.handle"
VERSION = 1
_REQUIRED = ("backend", "run_id", "job", "config", "data")
_TYPES: dict[str, type] = {
    "backend": str,
    "run_id": str,
    "job": dict,
    "config": dict,
    "data": dict,
}


def write_record(path: Path, record: dict[str, Any], *, sync: bool = True) -> None:
    """Write a record atomically with mode 0600, stamping format and version."""
    full = {"format": FORMAT, "version": VERSION, **record}
    write_json_atomic(Path(path), full, sync=sync)


def read_record(path: Path) -> dict[str, Any]:
    """Read and check a record; any problem is a one-line :class:`RecordError`."""
    path = Path(path)
    too_big = oversize(path, "Handle")
    if too_big:
        raise RecordError(too_big)
    try:
        data = read_capped(path, "Handle")
        if isinstance(data, str):
            raise RecordError(data)
    except FileNotFoundError:
        raise RecordError(f"Handle file '{path}' does not exist: check the path.") from None
    except OSError as exc:
        raise RecordError(f"Handle file '{path}' cannot be read: {exc}") from exc
    return parse_record(data, path)


def parse_record(data: bytes, path: Path | str) -> dict[str, Any]:
    """Check the bytes of the handle file ``path``, read by the caller; as :func:`read_record`.

    For listings that read thousands of records their own way (``tether ls``).
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecordError(f"Handle file '{path}' cannot be read: {exc}") from exc
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RecordError(
            f"Handle file '{path}' is corrupt or truncated (invalid JSON at line "
            f"{exc.lineno}, column {exc.colno}): save the handle again."
        ) from exc
    except (ValueError, RecursionError):  # deep nesting, huge integers
        raise RecordError(
            f"Handle file '{path}' is corrupt (nested too deeply or holds an oversized "
            "value): save the handle again."
        ) from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise RecordError(f"'{path}' is not a tether handle file (no 'format: {FORMAT}').")
    version = record.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise RecordVersionError(f"Handle file '{path}' has no valid schema version.")
    if version > VERSION:
        raise RecordVersionError(
            f"Handle file '{path}' has schema version {version}, newer than this tether "
            f"reads ({VERSION}): upgrade tether."
        )
    if version < 1:
        raise RecordVersionError(f"Handle file '{path}' has unknown schema version {version}.")
    missing = [key for key in _REQUIRED if key not in record]
    if missing:
        raise RecordError(f"Handle file '{path}' is incomplete: missing {', '.join(missing)}.")
    for key, kind in _TYPES.items():
        if not isinstance(record[key], kind):
            raise RecordError(
                f"Handle file '{path}' is corrupt: '{key}' must be a {kind.__name__}, "
                f"not {type(record[key]).__name__}: save the handle again."
            )
    return record
