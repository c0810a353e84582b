"""Content-addressed files beside a cache store: ``blobs/ab/abcdef…`` by SHA-256.

A blob is written to a temporary file in the same folder and renamed to its digest,
so a crash never leaves a half blob under a real name. Blobs are read-only (0444):
restored outputs are hard links to them where the filesystem allows, and a blob
found changed on disk (size or mtime differ from the record) is treated as gone.
No locks: publishing a blob is a hard link of a finished temporary file
(``_files.link_once``, safe on NFS) or an atomic rename.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path

from .._files import link_once, make_private_dir


def _digest_of(path: Path) -> str | None:
    try:
        with open(path, "rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()
    except OSError:
        return None


class BlobDir:
    """A folder of content-addressed, read-only files."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, digest: str) -> Path:
        """Where the blob with ``digest`` lives."""
        return self.root / digest[:2] / digest

    def put(self, source: Path) -> tuple[str, int, int]:
        """Store a copy of ``source``; return (digest, size, mtime_ns) of the blob.

        Content already stored (and intact) is not written again: no copy, no fsync.
        """
        name = _digest_of(source)
        if name is None:
            raise FileNotFoundError(f"cannot read '{source}' to store it")
        target = self.path(name)
        if not (target.exists() and _digest_of(target) == name):
            # New, or changed on disk since it was stored (a restored hard link edited).
            self._write(source, target)
        info = target.stat()
        return name, info.st_size, info.st_mtime_ns

    def _write(self, source: Path, target: Path) -> None:
        make_private_dir(target.parent)  # owner-only, the root and its parents too
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".blob.", suffix=".tmp")
        try:
            with open(source, "rb") as src, os.fdopen(fd, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
                dst.flush()
                os.fsync(dst.fileno())
            os.chmod(tmp, 0o444)
            # Publish only if nobody else did meanwhile: a blob another writer
            # just recorded (with its mtime) must stay the same file.
            if not link_once(tmp, target) and _digest_of(target) != target.name:
                os.replace(tmp, target)  # changed on disk: replace it
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def intact(self, digest: str, size: int, mtime_ns: int) -> bool:
        """True when the blob exists unchanged since it was recorded."""
        try:
            info = self.path(digest).stat()
        except OSError:
            return False
        return info.st_size == size and info.st_mtime_ns == mtime_ns

    def restore(self, digest: str, target: Path) -> None:
        """Put the blob at ``target``: a hard link where possible, else a copy."""
        make_private_dir(target.parent)
        source = self.path(digest)
        try:
            os.link(source, target)
        except OSError:
            with contextlib.suppress(OSError):
                if os.path.samefile(source, target):
                    return  # linked after all (NFS: a retransmitted link says EEXIST)
            shutil.copyfile(source, target)

    def digests(self) -> set[str]:
        """Every stored digest."""
        if not self.root.is_dir():
            return set()
        return {p.name for p in self.root.glob("??/*") if not p.name.startswith(".")}

    def remove(self, digest: str) -> int:
        """Delete one blob; return the bytes freed."""
        path = self.path(digest)
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return 0
        return size

    def sweep_temps(self, older_than: float = 3600.0) -> None:
        """Delete temporary files left by writers that crashed (not recent ones: a
        writer may be busy with them)."""
        if not self.root.is_dir():
            return
        limit = time.time() - older_than
        for tmp in self.root.glob(".blob.*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                if tmp.stat().st_mtime < limit:
                    tmp.unlink()
