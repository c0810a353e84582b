"""ArchivePostprocessor: pack a run's outputs, or its whole folder, into a zip or tar.gz.

Run folders are treated as hostile: member names are relative POSIX paths inside
the run folder, symlinks are archived only when they resolve inside it (as the
file they point to, under their own name), symlinked folders are not entered,
special files are never opened (a FIFO would hang the read), and the archive
appears at its destination whole or not at all. Given a runs folder (``runs_dir``),
a run folder that does not resolve to a folder inside it is refused untouched.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .._loading import quote
from ..result import RunResult

#: Accepted ``archive_format`` values → the format written.
_FORMATS = {"zip": "zip", "tar.gz": "tar.gz", "tgz": "tar.gz"}
_SOURCES = ("outputs", "folder")
_OPTIONS = ("archive_format", "source", "destination", "runs_dir")
#: Zip timestamps cannot leave this range.
_ZIP_EARLIEST = (1980, 1, 1, 0, 0, 0)
_ZIP_LATEST = (2107, 12, 31, 23, 59, 58)

Skipped = list[dict[str, str]]


class _Refused(Exception):
    """The options, or the run itself, rule the archive out; the message says why."""


@dataclass(frozen=True)
class _Member:
    """One file to archive."""

    name: str  # relative POSIX path inside the archive (a symlink keeps its own name)
    location: Path  # where it was found, its folders resolved
    path: Path  # the regular file whose bytes are stored (symlinks resolved)
    st: os.stat_result  # of ``path``, to notice a file swapped before it is read


class ArchivePostprocessor:
    """Pack a run's outputs (or its whole folder) into one zip or tar.gz file.

    Args:
        runs_dir: the runs folder the run folders must lie in (a backend's
            ``runs_dir``); a result naming a folder elsewhere is refused. The
            ``runs_dir`` option of :meth:`process` overrides it for one call.
    """

    def __init__(self, runs_dir: str | os.PathLike[str] | None = None) -> None:
        self.runs_dir = runs_dir

    def process(
        self,
        result: RunResult,
        *,
        archive_format: str = "zip",
        source: str = "outputs",
        destination: str | os.PathLike[str] | None = None,
        runs_dir: str | os.PathLike[str] | None = None,
        **unknown: Any,
    ) -> dict[str, Any]:
        """Archive ``result``'s files and report what went in and what was left out.

        Files that cannot be archived safely (outside the run folder, symlinks
        pointing out, dangling or looping, folders, FIFOs, sockets, devices) are
        listed under ``skipped`` with the reason instead of failing the archive.

        Args:
            result: a finished run with a ``run_dir``.
            archive_format: ``"zip"`` or ``"tar.gz"`` (``"tgz"`` too).
            source: ``"outputs"`` (the run's listed outputs; relative ones are
                taken from the run folder) or ``"folder"`` (every file in it).
            destination: where the archive goes; a relative path lies inside the run
                folder. Default ``<run folder>/archive.zip`` (or ``archive.tar.gz``).
            runs_dir: the runs folder the run folder must lie in (resolved, like
                the run folder); default the one given to the constructor, if any.

        Returns:
            ``success`` and ``message``; when the options are usable also
            ``archive`` (absolute path, None when nothing was archived), ``files``
            (member names, sorted) and ``skipped`` (``{"path", "reason"}`` each).
        """
        try:
            fmt = _check_options(archive_format, source, unknown)
            run_dir = _run_folder(result)
            _check_inside(run_dir, result, runs_dir if runs_dir is not None else self.runs_dir)
            target = _destination(run_dir, destination, fmt)
        except _Refused as exc:
            return {"success": False, "message": str(exc)}
        skipped: Skipped = []
        if source == "folder":
            members = _select(_walk(run_dir, skipped), run_dir, target, skipped, report=False)
        else:
            members = _select(result.outputs, run_dir, target, skipped, report=True)
        # Imported here: `import tether` should not pay for the archive modules.
        import tarfile
        import zipfile

        # RuntimeError is zipfile's answer to a file that grew past 4 GiB while being read.
        try:
            names = _write(target, fmt, members, skipped)
        except (OSError, tarfile.TarError, zipfile.BadZipFile, ValueError, RuntimeError) as exc:
            return {
                "success": False,
                "message": f"Could not write the archive '{target}': {exc}",
                "archive": None,
                "archive_path": None,
                "files": [],
                "skipped": skipped,
            }
        if not names:
            return {
                "success": True,
                "message": f"Nothing to archive: {_why_empty(source, skipped)}",
                "archive": None,
                "archive_path": None,
                "files": [],
                "skipped": skipped,
            }
        count = f"{len(names)} file{'' if len(names) == 1 else 's'}"
        size = _human_size(target.stat().st_size)
        return {
            "success": True,
            "message": f"Archived {count} ({size}) to {target}",
            "archive": str(target),
            "archive_path": str(target),  # rompy's key for the same path
            "files": names,
            "skipped": skipped,
        }


def _check_options(archive_format: object, source: object, unknown: dict[str, Any]) -> str:
    """The format to write, once every option is known and usable."""
    if unknown:
        names = ", ".join(quote(name) for name in sorted(unknown))
        plural = "s" if len(unknown) > 1 else ""
        raise _Refused(
            f"Unknown option{plural} {names} for the archive postprocessor: "
            f"it accepts {', '.join(_OPTIONS)}"
        )
    fmt = _FORMATS.get(archive_format.lower()) if isinstance(archive_format, str) else None
    if fmt is None:
        raise _Refused(f"Unsupported archive_format {quote(archive_format)}: use 'zip' or 'tar.gz'")
    if source not in _SOURCES:
        raise _Refused(
            f"Unsupported source {quote(source)}: use 'outputs' (the run's outputs) "
            "or 'folder' (every file in the run folder)"
        )
    return fmt


def _run_folder(result: RunResult) -> Path:
    """The run's folder, resolved, or why there is none."""
    if result.run_dir is None:
        raise _Refused(
            f"Run {quote(result.run_id)} has no folder to archive: its backend keeps none"
        )
    given = result.run_dir.expanduser()
    if given.is_symlink():
        raise _Refused(
            f"Run folder '{given}' is a symlink: tether archives only the run folders it "
            "created; archive the folder it points to directly"
        )
    try:
        run_dir = given.resolve(strict=True)
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop (Python < 3.13)
        run_dir = None
    if run_dir is None or not run_dir.is_dir():
        raise _Refused(f"Run folder '{result.run_dir}' does not exist: there is nothing to archive")
    return run_dir


def _check_inside(run_dir: Path, result: RunResult, runs_dir: object) -> None:
    """Refuse ``run_dir`` (resolved) unless it lies inside ``runs_dir`` (resolved).

    A result or handle file is input, not authority: without this a crafted one
    could have any folder of the user's archived, and an archive written into it.
    """
    if runs_dir is None:
        return
    if not isinstance(runs_dir, str | os.PathLike):
        raise _Refused(f"runs_dir must be a path, not {type(runs_dir).__name__}")
    try:
        runs = Path(runs_dir).expanduser().resolve(strict=True)
    except (OSError, RuntimeError):
        runs = None
    if runs is None or not runs.is_dir():
        raise _Refused(f"Runs folder '{runs_dir}' does not exist: there is nothing to archive")
    if run_dir == runs or not run_dir.is_relative_to(runs):
        raise _Refused(
            f"Run folder '{result.run_dir}' is not inside the runs folder '{runs}': tether "
            "archives only run folders in its runs folder; check the result or handle file"
        )


def _destination(run_dir: Path, destination: object, fmt: str) -> Path:
    """Where the archive goes: its folder resolved, checked to exist (and to be inside
    the run folder when ``destination`` is relative)."""
    if destination is None:
        return run_dir / f"archive.{fmt}"
    if not isinstance(destination, str | os.PathLike):
        raise _Refused(f"destination must be a path, not {type(destination).__name__}")
    wanted = Path(destination).expanduser()
    # abspath folds '..' lexically, so 'x/..' means the run folder itself, not a file.
    path = Path(os.path.abspath(run_dir / wanted))
    try:
        folder = path.parent.resolve()
    except (OSError, RuntimeError) as exc:
        raise _Refused(f"Destination {quote(str(wanted))} cannot be resolved: {exc}") from None
    target = folder / path.name
    if not wanted.is_absolute() and (target == run_dir or not target.is_relative_to(run_dir)):
        raise _Refused(
            f"Destination {quote(str(wanted))} leaves the run folder '{run_dir}': "
            "give a relative path inside it, or an absolute path"
        )
    if not folder.is_dir():
        raise _Refused(
            f"Destination folder '{folder}' does not exist: create it first, "
            "or choose a destination in an existing folder"
        )
    if target.is_dir():
        raise _Refused(
            f"Destination '{target}' is a folder: name the archive file, "
            f"for example '{target / f'archive.{fmt}'}'"
        )
    return target


def _walk(run_dir: Path, skipped: Skipped) -> list[Path]:
    """Every entry under ``run_dir`` that may be a file, without entering symlinked
    folders (which are returned, to be reported) and without tether's temp files."""
    found: list[Path] = []

    def unreadable(exc: OSError) -> None:
        skipped.append({"path": str(exc.filename), "reason": f"cannot be listed: {exc.strerror}"})

    for top, folders, files in os.walk(run_dir, onerror=unreadable):
        folders.sort()
        here = Path(top)
        found.extend(here / name for name in folders if os.path.islink(here / name))
        found.extend(here / name for name in sorted(files) if not _is_temp(name))
    return found


def _is_temp(name: str) -> bool:
    return name.startswith(".") and name.endswith(".tmp")


def _select(
    paths: Iterable[Path], run_dir: Path, target: Path, skipped: Skipped, *, report: bool
) -> list[_Member]:
    """The archivable ``paths`` sorted by member name; the others go to ``skipped``.

    The destination itself is left out, reported only when ``report`` is set (it
    was asked for by name, not found by walking the folder).
    """
    members: dict[str, _Member] = {}
    for path in paths:
        found = _member(run_dir / path, run_dir)
        if isinstance(found, str):
            skipped.append({"path": str(path), "reason": found})
        elif target in (found.location, found.path):
            if report:
                skipped.append({"path": str(path), "reason": "it is the archive being written"})
        else:
            members.setdefault(found.name, found)
    return [members[name] for name in sorted(members)]


def _member(path: Path, run_dir: Path) -> _Member | str:
    """The archive member for ``path``, or why it is left out."""
    if path.name in ("", ".."):
        return "not a file"
    try:
        folder = path.parent.resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop (Python < 3.13)
        return f"its folder cannot be resolved: {exc}"
    location = folder / path.name
    if not location.is_relative_to(run_dir):
        return "outside the run folder"
    if location == run_dir:
        return "the run folder itself, not a file"
    name = location.relative_to(run_dir).as_posix()
    if "\\" in name:
        return "its name holds a backslash, which some unpackers read as a folder separator"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "its name is not valid UTF-8"
    try:
        is_link = stat.S_ISLNK(os.lstat(location).st_mode)
    except OSError as exc:
        return "does not exist" if exc.errno == errno.ENOENT else f"cannot be read: {exc.strerror}"
    real = Path(os.path.realpath(location)) if is_link else location
    if is_link and not real.is_relative_to(run_dir):
        return f"a symlink to '{real}', outside the run folder (not followed)"
    try:
        st = os.stat(real)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a symlink loop"
        if exc.errno == errno.ENOENT:
            return "a dangling symlink" if is_link else "does not exist"
        return f"cannot be read: {exc.strerror}"
    if stat.S_ISDIR(st.st_mode):
        return "a symlinked folder (not followed)" if is_link else "a folder, not a file"
    if not stat.S_ISREG(st.st_mode):
        return f"not a regular file ({_kind(st.st_mode)})"
    return _Member(name, location, real, st)


def _kind(mode: int) -> str:
    kinds = {
        stat.S_ISFIFO: "a FIFO",
        stat.S_ISSOCK: "a socket",
        stat.S_ISCHR: "a character device",
        stat.S_ISBLK: "a block device",
    }
    return next((kind for test, kind in kinds.items() if test(mode)), "an unknown kind")


def _open(member: _Member) -> IO[bytes] | str:
    """``member``'s file opened for reading, or why it cannot be.

    O_NONBLOCK and O_NOFOLLOW, plus the inode check, keep a file swapped for a
    FIFO or a symlink after it was looked at from hanging or leaking the read.
    """
    try:
        fd = os.open(member.path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError as exc:
        return f"cannot be read: {exc.strerror}"
    handle = os.fdopen(fd, "rb")
    now = os.fstat(fd)
    if not stat.S_ISREG(now.st_mode) or (now.st_dev, now.st_ino) != (
        member.st.st_dev,
        member.st.st_ino,
    ):
        handle.close()
        return "it changed while being archived"
    return handle


def _write(target: Path, fmt: str, members: list[_Member], skipped: Skipped) -> list[str]:
    """Write ``members`` to a temp file beside ``target`` and rename it into place.

    Returns the member names written; when there are none no file is left, and
    an existing ``target`` is kept. A failure leaves no temp file either.
    """
    if not members:
        return []
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            if fmt == "zip":
                names = _write_zip(out, members, skipped)
            else:
                names = _write_tar(out, members, skipped)
        if names:
            os.replace(tmp, target)
        return names
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _write_zip(out: IO[bytes], members: list[_Member], skipped: Skipped) -> list[str]:
    import zipfile

    names: list[str] = []
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for member in members:
            source = _open(member)
            if isinstance(source, str):
                skipped.append({"path": str(member.location), "reason": source})
                continue
            with source:
                st = os.fstat(source.fileno())
                info = zipfile.ZipInfo(member.name, _zip_time(st.st_mtime))
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = (stat.S_IFREG | stat.S_IMODE(st.st_mode)) << 16
                info.file_size = st.st_size  # lets zipfile choose zip64 for big files
                with archive.open(info, "w") as sink:
                    shutil.copyfileobj(source, sink)
            names.append(member.name)
    return names


def _write_tar(out: IO[bytes], members: list[_Member], skipped: Skipped) -> list[str]:
    import gzip
    import tarfile

    names: list[str] = []
    # No name or time in the gzip header and owner-free entries: the archive's bytes
    # depend on the files alone.
    with (
        gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0) as packed,
        tarfile.open(fileobj=packed, mode="w", format=tarfile.PAX_FORMAT) as archive,
    ):
        for member in members:
            source = _open(member)
            if isinstance(source, str):
                skipped.append({"path": str(member.location), "reason": source})
                continue
            with source:
                st = os.fstat(source.fileno())
                info = tarfile.TarInfo(member.name)
                info.size = st.st_size
                info.mtime = int(st.st_mtime)
                info.mode = stat.S_IMODE(st.st_mode)
                archive.addfile(info, source)
            names.append(member.name)
    return names


def _zip_time(mtime: float) -> tuple[int, int, int, int, int, int]:
    """``mtime`` as a zip timestamp, clamped to the years zip can hold."""
    try:
        local = time.localtime(mtime)
    except (OverflowError, OSError, ValueError):
        return _ZIP_EARLIEST
    when = (local.tm_year, local.tm_mon, local.tm_mday, local.tm_hour, local.tm_min, local.tm_sec)
    return min(max(when, _ZIP_EARLIEST), _ZIP_LATEST)


def _why_empty(source: str, skipped: Skipped) -> str:
    if skipped:
        return f"none of the files found could be archived ({len(skipped)} skipped)"
    if source == "folder":
        return "the run folder holds no files"
    return "the run lists no outputs"


def _human_size(size: int) -> str:
    """``size`` bytes in decimal units: '512 B', '1.2 kB', '3.4 MB'."""
    if size < 1000:
        return f"{size} B"
    value = float(size)
    for unit in ("kB", "MB", "GB", "TB"):
        value /= 1000
        if value < 999.95 or unit == "TB":
            break
    return f"{value:.1f} {unit}"
