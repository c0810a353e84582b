"""Shared fixtures: isolated tether home, event-loop params, fresh-process helper."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .cli_support import cli  # noqa: F401  (a fixture, shared by the CLI test modules)
from .dask_support import dask_cluster, dask_service  # noqa: F401  (a real scheduler)
from .plugin_env import nohup_plugin, nohup_plugin_site  # noqa: F401  (the example plugin)
from .services import docker_engine, docker_service, slurm_service  # noqa: F401  (real services)


@pytest.fixture(autouse=True)
def tether_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own state folder (runs go there unless a config says else)
    and its own default cache store."""
    home = tmp_path / "tether-home"
    monkeypatch.setenv("TETHER_HOME", str(home))
    # The default cache store too (not XDG_CACHE_HOME: the compiled supervisor lives there).
    monkeypatch.setenv("TETHER_CACHE_STORE", str(tmp_path / "tether-cache.sqlite"))
    # Resource slots of its own too: no test waits for another test's GPUs.
    monkeypatch.setenv("TETHER_SLOTS_DIR", str(tmp_path / "tether-slots"))
    return home


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Loop-neutral tests run under both asyncio and trio (anyio's pytest plugin)."""
    return str(request.param)


def run_python(code: str, *args: str, timeout: float = 60) -> dict[str, Any]:
    """Run ``code`` in a fresh interpreter; it must print one JSON object last."""
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=os.environ.copy(),
        check=False,
    )
    assert proc.returncode == 0, f"fresh process failed ({proc.returncode}):\n{proc.stderr}"
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))
