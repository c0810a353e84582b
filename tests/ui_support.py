"""A real ``tether ui`` process and a real headless Chromium, for tests/test_ui.py.

The browser is Debian's Chromium (``scripts/chromium.sh`` installs it), driven by
Playwright pointed at the system binary: ``playwright install`` cannot download
browsers here. Without Chromium or Playwright the tests skip on a laptop and fail
in CI (``services.missing``).
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from .cli_support import CLI, TETHER
from .services import missing

CHROMIUM = os.environ.get("TETHER_CHROMIUM", "/usr/bin/chromium")
START = "bash scripts/chromium.sh"
ROOT = Path(__file__).resolve().parent.parent

#: Generous: the machine may be loaded (two test copies on two cores).
TIMEOUT_MS = 30_000


def artifacts() -> Path:
    """Where screenshots go: ``$TETHER_TEST_ARTIFACTS/ui``, else tests/artifacts/ui."""
    base = os.environ.get("TETHER_TEST_ARTIFACTS")
    folder = Path(base) / "ui" if base else ROOT / "tests" / "artifacts" / "ui"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def screenshot(page: Any, name: str) -> Path:
    """A full-page screenshot as an artifact (and for the docs when
    ``TETHER_UI_DOCS_IMAGES`` names a folder: ``docs/images/ui``)."""
    path = artifacts() / f"{name}-{os.getpid()}.png"
    page.screenshot(path=str(path), full_page=True)
    docs = os.environ.get("TETHER_UI_DOCS_IMAGES")
    if docs:
        Path(docs).mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, Path(docs) / f"{name}.png")
    return path


def launch_browser() -> Iterator[Any]:
    """A headless Chromium (the system's), or a skip/CI failure naming the fix."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("playwright is not installed: pip install -e '.[dev]'")
    if not os.access(CHROMIUM, os.X_OK):
        missing(f"Chromium is not installed at {CHROMIUM}: run {START}")
    with sync_playwright() as driver:
        try:
            browser = driver.chromium.launch(
                executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
            )
        except Exception as exc:  # a browser that does not start is a missing service
            missing(f"Chromium at {CHROMIUM} does not start ({exc}); run {START}")
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class Dashboard:
    """A running ``tether ui``: its URL (with the token), address and process."""

    url: str
    proc: subprocess.Popen[str]
    log: Path

    @property
    def base(self) -> str:
        """``http://127.0.0.1:PORT``."""
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def token(self) -> str:
        """The per-start token from the URL."""
        return self.url.split("token=", 1)[1]

    @property
    def port(self) -> int:
        """The port the dashboard listens on."""
        return int(urlsplit(self.url).port or 0)

    def request(
        self, path: str, *, method: str = "GET", headers: dict[str, str] | None = None
    ) -> tuple[int, str]:
        """One plain HTTP request (no browser): status and body."""
        request = urllib.request.Request(
            self.base + path,
            method=method,
            headers=headers or {},
            data=b"" if method == "POST" else None,
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()


@contextlib.contextmanager
def dashboard(cli: CLI, *args: str | Path) -> Iterator[Dashboard]:
    """``tether ui --port 0 ARGS`` running until the block ends."""
    log = cli.tmp / f"ui-{len(list(cli.tmp.glob('ui-*.log')))}.log"
    with log.open("w") as errors:
        proc = subprocess.Popen(
            [TETHER, "ui", "--port", "0", *map(str, args)],
            cwd=cli.tmp,
            env=cli.env,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
        )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        line = proc.stdout.readline().strip() if ready else ""
        if not line.startswith("http://127.0.0.1:"):
            proc.kill()
            proc.wait()
            pytest.fail(f"tether ui printed no URL: {line!r}; stderr: {log.read_text()}")
        yield Dashboard(line, proc, log)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def wait_for_file(path: Path, timeout: float = 30) -> None:
    """Wait until ``path`` exists (a run's own marker): the test's only polling."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} never appeared")
        time.sleep(0.05)
