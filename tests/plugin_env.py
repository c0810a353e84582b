"""The example plugin (examples/custom_backend), installed for real by pip.

pip builds and installs it once per session into a folder of its own; a test that
asks for ``nohup_plugin`` then sees it the way a user's ``pip install`` would make
it visible: on ``sys.path`` and ``PYTHONPATH`` (fresh interpreters and the
``tether`` script must find it too) and so in tether's registry. Other tests see
only the built-in backends, whichever order the tests run in.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import tether.registry

PLUGIN_SOURCE = Path(__file__).resolve().parents[1] / "examples" / "custom_backend"


@pytest.fixture(scope="session")
def nohup_plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """``pip install --target`` the plugin once; the folder it went to."""
    root = tmp_path_factory.mktemp("nohup-plugin")
    # Build from a copy: an in-tree build would leave build/ and *.egg-info behind.
    source = root / "src"
    shutil.copytree(PLUGIN_SOURCE, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    target = root / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(
            f"pip could not install {PLUGIN_SOURCE} ({proc.returncode}):\n"
            f"{proc.stdout}\n{proc.stderr}",
            pytrace=False,
        )
    yield target
    sys.modules.pop("tether_nohup", None)


@pytest.fixture
def nohup_plugin(nohup_plugin_site: Path) -> Iterator[Path]:
    """The installed plugin, importable and registered for the length of one test."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(nohup_plugin_site))  # also invalidates import caches
        paths = [str(nohup_plugin_site), os.environ.get("PYTHONPATH", "")]
        patch.setenv("PYTHONPATH", os.pathsep.join(filter(None, paths)))
        tether.registry.reload_plugins()
        yield nohup_plugin_site
    tether.registry.reload_plugins()
