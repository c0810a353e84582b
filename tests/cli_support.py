"""The ``cli`` fixture: the real ``tether`` console script run in a subprocess.

Every call points ``TETHER_HOME`` at the test's own temporary folder, so run
folders land in ``<tmp>/home/runs``.
"""

from __future__ import annotations

import os
import pty
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest


def _script() -> str:
    # The script pip installed next to this interpreter: no PATH shims in between.
    beside = Path(sys.executable).parent / "tether"
    found = str(beside) if beside.exists() else shutil.which("tether")
    if found is None:
        pytest.fail("the 'tether' console script is not installed: pip install -e '.[dev]'")
    return found


TETHER = _script()


class CLI:
    """Runs ``tether`` with ``TETHER_HOME`` in a temporary folder."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.home = tmp / "home"
        self.env = {**os.environ, "TETHER_HOME": str(self.home)}
        self.env.pop("TETHER_DEBUG", None)

    def __call__(
        self, *args: str | Path, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        argv = [TETHER, *map(str, args)]
        return subprocess.run(
            argv, cwd=cwd or self.tmp, env=self.env, capture_output=True, text=True, timeout=60
        )

    def write(self, name: str, text: str) -> Path:
        path = self.tmp / name
        path.write_text(text)
        return path

    def on_terminal(self, *args: str | Path) -> tuple[int, str, str]:
        """Run ``tether`` with stderr on a pseudo-terminal: exit status, what the
        terminal showed, and stdout."""
        controller, terminal = pty.openpty()
        try:
            with subprocess.Popen(
                [TETHER, *map(str, args)],
                cwd=self.tmp,
                env=self.env,
                stdout=subprocess.PIPE,
                stderr=terminal,
                text=True,
            ) as proc:
                os.close(terminal)
                shown = b""
                while True:
                    try:
                        chunk = os.read(controller, 4096)
                    except OSError:  # EIO: every writer of the terminal has closed it
                        break
                    if not chunk:
                        break
                    shown += chunk
                out, _ = proc.communicate(timeout=30)
        finally:
            os.close(controller)
        return proc.returncode, shown.decode(), out

    def run_dirs(self) -> list[Path]:
        runs = self.home / "runs"
        return sorted(runs.iterdir()) if runs.is_dir() else []


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The single ``tether: error:`` line of a usage failure (exit 2, no traceback)."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("tether: error: ")
    return lines[0]


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[CLI]:
    runner = CLI(tmp_path)
    yield runner
    # A failed test must not leave `sleep 30` runs behind.
    for run_dir in runner.run_dirs():
        if not (run_dir / "exit.json").exists() and (run_dir / "handle.json").exists():
            runner("cancel", run_dir / "handle.json")
