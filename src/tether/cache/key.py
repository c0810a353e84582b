"""Cache keys: a stable hash of everything that decides a run's result.

The default key (:func:`default_key`) hashes, as canonical JSON through SHA-256:

* for a ``Call``, its target and the SHA-256 of its pickled function and arguments;
* the job's command, non-secret env values (secret ones by name only), workdir,
  resources other than walltime, output globs, and the *content* of every input
  file (names and bytes; never mtimes or modes), folders walked in sorted order;
* the inner backend's result-relevant settings (``Backend.cache_fields()``: the
  config without ``timeout`` and other fields that cannot change a result; the
  Docker backend puts the image's id in place of its tag);
* :data:`CACHE_FORMAT` and the user's ``cache_version``.

The job's name is left out: renaming a job does not change what it computes.
A replacement is any ``(job, fields, cache_version) -> str`` callable.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..call import Call
from ..errors import SubmitError
from ..job import Job, public_env, secret_keys

#: Bumped when what goes into a key changes, so old entries are never hit wrongly.
CACHE_FORMAT = 1

#: The signature of a key function: job, the backend's cache fields, cache_version.
KeyFunction = Callable[[Job, dict[str, Any], str], str]


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes (``hashlib.file_digest``: chunked, GIL released)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def input_digest(path: Path) -> list[Any]:
    """A file's digest, or a folder's sorted (relative path, digest) pairs; links followed."""
    if path.is_dir():
        entries: list[Any] = []
        for folder, dirs, files in os.walk(path, followlinks=True):
            dirs.sort()
            base = Path(folder)
            for name in sorted(files):
                entries.append(
                    [(base / name).relative_to(path).as_posix(), file_digest(base / name)]
                )
        return ["dir", entries]
    return ["file", file_digest(path)]


def job_fields(job: Job) -> dict[str, Any]:
    """The result-relevant part of a job, with input contents hashed (reads files)."""
    inputs = []
    for source in job.inputs:
        path = source.expanduser()
        try:
            inputs.append([path.name, input_digest(path)])
        except OSError as exc:
            raise SubmitError(
                f"Input '{path}' cannot be read for the cache key: {exc.strerror or exc}; "
                "fix the job's inputs."
            ) from exc
    resources = job.resources.model_dump(mode="json", exclude={"walltime"})
    fields: dict[str, Any] = {}
    if isinstance(job, Call):
        # What runs: the function's name and the hash of the pickled function and
        # arguments (an ensemble member's seed is among them).
        fields["call"] = {"target": job.target, "digest": job.payload_digest()}
    return fields | {
        "command": job.command,
        "env": public_env(job.env),
        "secret_env": secret_keys(job.env),
        "workdir": None if job.workdir is None else str(job.workdir),
        "inputs": inputs,
        "outputs": job.outputs,
        "resources": resources,
    }


def canonical(obj: Any) -> bytes:
    """Canonical JSON: sorted keys, no spaces, UTF-8; equal data gives equal bytes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def default_key(job: Job, fields: dict[str, Any], cache_version: str = "") -> str:
    """The default cache key (see the module docstring): 64 hex digits."""
    payload = {
        "format": CACHE_FORMAT,
        "cache_version": cache_version,
        "backend": fields,
        "job": job_fields(job),
    }
    return hashlib.sha256(canonical(payload)).hexdigest()
