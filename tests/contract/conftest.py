"""The single fixture that parametrises the contract suite over every backend."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import HARNESSES, Harness


@pytest.fixture(params=sorted(HARNESSES))
def harness(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Harness]:
    """A harness for one backend; the local one also runs with the Python supervisor.

    ``nohup`` is the third-party example plugin, installed once per session.
    """
    name = str(request.param)
    if name == "nohup":
        request.getfixturevalue("nohup_plugin")  # the example plugin, installed by pip
    monkeypatch.setenv("TETHER_SUPERVISOR", "python" if name == "local-python" else "auto")
    yield HARNESSES[name](tmp_path / "runs")
