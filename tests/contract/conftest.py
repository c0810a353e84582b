"""The single fixture that parametrises the contract suite over every backend."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import HARNESSES, Harness


@pytest.hookimpl(tryfirst=True)  # before the fixture params of anyio_backend apply
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every (event loop, backend) pair a backend supports: docker is asyncio only."""
    if "harness" not in metafunc.fixturenames:
        return
    pairs = [(loop, name) for name in sorted(HARNESSES) for loop in HARNESSES[name].loops]
    metafunc.parametrize(
        ("anyio_backend", "harness_name"), pairs, ids=[f"{loop}-{name}" for loop, name in pairs]
    )


@pytest.fixture
def harness(
    request: pytest.FixtureRequest,
    harness_name: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Harness]:
    """A harness for one backend; the local one also runs with the Python supervisor.

    ``nohup`` is the third-party example plugin, installed once per session;
    ``docker`` needs the real engine and ``slurm*`` the real cluster (missing: skip
    on a laptop, fail in CI); ``*dask*`` a real scheduler and workers, which the
    session starts (tests/dask_support.py).
    """
    if harness_name == "nohup":
        request.getfixturevalue("nohup_plugin")  # the example plugin, installed by pip
    if harness_name == "docker":
        request.getfixturevalue("docker_service")
    if "dask" in harness_name:
        request.getfixturevalue("dask_service")
    if harness_name.startswith("slurm"):
        request.getfixturevalue("slurm_service")
    monkeypatch.setenv("TETHER_SUPERVISOR", "python" if harness_name == "local-python" else "auto")
    yield HARNESSES[harness_name](tmp_path / "runs")
