"""Building a run's image from a Dockerfile, once per distinct build context.

The context (minus what ``.dockerignore`` excludes), the Dockerfile's path and the
build args are hashed; the image is tagged with that hash, so a submit whose
context has not changed finds the image and skips the build. The context goes to
the engine's build API as a tar stream; no docker CLI is involved.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
import tarfile
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio.to_thread

from ...errors import SubmitError
from ._engine import is_not_found

if TYPE_CHECKING:
    import aiodocker

#: Bumped when the way contexts are hashed changes, so old tags are not reused.
_DIGEST_FORMAT = "1"
_SLUG = re.compile(r"[^a-z0-9]+")


@lru_cache(maxsize=256)
def _pattern(text: str) -> re.Pattern[str]:
    """A ``.dockerignore`` pattern as a regex over '/'-separated relative paths."""
    out = []
    i = 0
    while i < len(text):
        char = text[i]
        if text.startswith("**", i):
            out.append(".*")
            i += 2
            if text.startswith("/", i):  # "**/" also matches no folder at all
                out[-1] = "(?:.*/)?"
                i += 1
            continue
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[":
            end = text.find("]", i + 1)
            if end == -1:
                out.append(re.escape(char))
            else:
                body = text[i + 1 : end].replace("\\", "\\\\")
                out.append(f"[{'^' + body[1:] if body.startswith('^') else body}]")
                i = end
        else:
            out.append(re.escape(char))
        i += 1
    return re.compile("".join(out) + r"\Z")


def ignore_rules(context: Path) -> list[tuple[bool, re.Pattern[str]]]:
    """The ``.dockerignore`` rules of ``context``: (excludes?, pattern), in order."""
    try:
        lines = (context / ".dockerignore").read_text().splitlines()
    except FileNotFoundError:
        return []
    rules = []
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        include = line.startswith("!")
        line = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        if line and line != ".":
            rules.append((not include, _pattern(line)))
    return rules


def _excluded(relative: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last pattern matching the path or a parent folder wins."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    verdict = False
    for excludes, pattern in rules:
        if any(pattern.match(prefix) for prefix in prefixes):
            verdict = excludes
    return verdict


def context_files(context: Path, dockerfile: Path) -> list[str]:
    """Relative paths (sorted) of the folders, files and links sent to the engine.

    As docker does: the Dockerfile and ``.dockerignore`` are always sent, folders
    are sent even when nothing inside them is (``COPY`` of an empty folder works),
    and named pipes, sockets and devices are left out.
    """
    rules = ignore_rules(context)
    keep = {dockerfile.as_posix(), ".dockerignore"}
    found: list[str] = []
    for folder, dirs, files in os.walk(context):
        base = Path(folder).relative_to(context)
        dirs.sort()
        for name in [*files, *dirs]:
            path = Path(folder) / name
            relative = (base / name).as_posix()
            mode = path.lstat().st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode)):
                continue
            if relative in keep or not _excluded(relative, rules):
                found.append(relative)
    return sorted(set(found))


def context_digest(
    context: Path, dockerfile: Path, build_args: dict[str, str], files: list[str]
) -> str:
    """A hash of everything that makes the image: file contents, modes, links, args."""
    digest = hashlib.sha256()
    digest.update(f"tether-build {_DIGEST_FORMAT}\0{dockerfile.as_posix()}\0".encode())
    for key in sorted(build_args):
        digest.update(f"arg\0{key}\0{build_args[key]}\0".encode())
    for relative in files:
        path = context / relative
        info = path.lstat()
        digest.update(f"file\0{relative}\0{stat.S_IMODE(info.st_mode):o}\0".encode())
        if stat.S_ISLNK(info.st_mode):
            digest.update(f"link\0{os.readlink(path)}\0".encode())
            continue
        if not stat.S_ISREG(info.st_mode):  # a folder: its name and mode are all
            continue
        with open(path, "rb") as handle:
            digest.update(hashlib.file_digest(handle, "sha256").digest())
    return digest.hexdigest()


def context_tar(context: Path, files: list[str]) -> io.BufferedIOBase:
    """An uncompressed tar of ``files`` (spooled to disk past 64 MiB), rewound."""
    spool = tempfile.SpooledTemporaryFile(max_size=64 << 20)  # noqa: SIM115 (returned)
    with tarfile.open(fileobj=spool, mode="w") as archive:
        for relative in files:
            archive.add(context / relative, arcname=relative, recursive=False)
    spool.seek(0)
    return spool  # type: ignore[return-value]


def image_tag(context: Path, digest: str) -> str:
    """``tether-build/<context folder>:<digest>``: readable in ``docker images``."""
    slug = _SLUG.sub("-", context.name.lower())[:40].strip("-") or "context"
    return f"tether-build/{slug}:{digest[:20]}"


def _prepare(context: Path, dockerfile: Path, build_args: dict[str, str]) -> tuple[str, list[str]]:
    try:
        files = context_files(context, dockerfile)
        return image_tag(context, context_digest(context, dockerfile, build_args, files)), files
    except OSError as exc:
        raise SubmitError(
            f"Cannot read build context '{context}': {exc.strerror or exc} "
            f"({exc.filename or ''}); fix the file or list it in .dockerignore."
        ) from exc


async def ensure_image(
    client: aiodocker.Docker, context: Path, dockerfile: Path, build_args: dict[str, str]
) -> str:
    """The tag of the image built from ``context``; built through the API if missing."""
    import aiodocker

    tag, files = await anyio.to_thread.run_sync(_prepare, context, dockerfile, build_args)
    try:
        await client.images.inspect(tag)
        return tag
    except aiodocker.DockerError as exc:
        if not is_not_found(exc):
            raise
    archive = await anyio.to_thread.run_sync(context_tar, context, files)
    try:
        log: list[dict[str, Any]] = await client.images.build(
            fileobj=archive,
            encoding="identity",
            tag=tag,
            path_dockerfile=dockerfile.as_posix(),
            buildargs=build_args or None,
            rm=True,
            forcerm=True,
            labels={"tether.build_context": str(context)},
        )
    except aiodocker.DockerError as exc:
        if getattr(exc, "status", 0) == 900:
            raise
        raise SubmitError(_build_failure(dockerfile, context, str(exc.message))) from exc
    finally:
        archive.close()
    errors = [str(entry["error"]) for entry in log if isinstance(entry, dict) and "error" in entry]
    if errors:  # older aiodocker reports a failed step in the log, not as an exception
        raise SubmitError(_build_failure(dockerfile, context, errors[-1]))
    return tag


def _build_failure(dockerfile: Path, context: Path, message: str) -> str:
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    detail = lines[-1] if lines else "no reason given"
    return (
        f"Building the image from '{dockerfile}' in '{context}' failed: {detail}; "
        "fix the Dockerfile (docker build shows the whole log)."
    )
