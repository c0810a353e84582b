"""The example third-party backend (examples/custom_backend), installed by pip.

The contract suite runs against it too (the ``nohup`` harness); these tests check
that tether finds it the way it finds any plugin: through the entry point.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
from pathlib import Path

import pytest

import tether
import tether.registry

from .cli_support import TETHER
from .plugin_env import PLUGIN_SOURCE

pytestmark = pytest.mark.usefixtures("nohup_plugin")


def test_registry_finds_the_plugin_by_its_entry_point() -> None:
    from tether_nohup import NohupConfig, NohupRunHandle

    assert tether.registry.config_class("nohup") is NohupConfig
    assert tether.backend_configs()["nohup"] is NohupConfig
    assert NohupConfig.handle_class() is NohupRunHandle
    assert NohupConfig.capabilities == {"detached", "reattach", "cancel", "commands", "timeout"}


def test_config_schema_documents_every_field_and_its_examples_validate() -> None:
    from tether_nohup import NohupConfig

    schema = NohupConfig.model_json_schema()
    for name in ("type", "runs_dir", "cancel_grace"):
        assert schema["properties"][name].get("description"), name
        assert schema["properties"][name].get("examples"), name
    assert schema["examples"]
    for example in schema["examples"]:
        assert NohupConfig.model_validate(example).type == "nohup"


def test_config_file_with_type_nohup_loads(tmp_path: Path) -> None:
    from tether_nohup import NohupConfig

    path = tmp_path / "nohup.yml"
    path.write_text(f"type: nohup\nruns_dir: {tmp_path / 'runs'}\ncancel_grace: 1.5\n")
    config = tether.load_config(path)
    assert isinstance(config, NohupConfig)
    assert (config.runs_dir, config.cancel_grace) == (tmp_path / "runs", 1.5)

    path.write_text("type: nohup\ncancel_grace: -1\n")
    with pytest.raises(tether.ConfigError, match="cancel_grace"):
        tether.load_config(path)


def test_tether_run_through_the_console_script(tmp_path: Path) -> None:
    job = tmp_path / "job.yml"
    job.write_text(
        "name: plugin\n"
        'command: "echo hello from nohup && echo $GREETING > out.txt"\n'
        "env: {GREETING: hi}\n"
        "outputs: [out.txt]\n"
    )
    (tmp_path / "nohup.yml").write_text("type: nohup\ncancel_grace: 1\n")
    home = tmp_path / "home"
    proc = subprocess.run(
        [TETHER, "run", "job.yml", "--backend-config", "nohup.yml", "--json"],
        cwd=tmp_path,
        env={**os.environ, "TETHER_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["state"] == "SUCCEEDED" and result["exit_code"] == 0
    run_dir = home / "nohup-runs" / result["run_id"]
    assert (run_dir / "stdout").read_text() == "hello from nohup\n"
    assert [Path(p) for p in result["outputs"]] == [run_dir / "out.txt"]
    assert (run_dir / "out.txt").read_text() == "hi\n"


def test_plugin_uses_only_public_tether_names() -> None:
    """The example must show that a plugin needs nothing private from tether."""
    tree = ast.parse((PLUGIN_SOURCE / "tether_nohup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tether"):
            assert node.module == "tether", f"imports from {node.module}"
            for alias in node.names:
                assert alias.name in tether.__all__, f"{alias.name} is not public"
        elif isinstance(node, ast.Import):
            assert not any(alias.name.startswith("tether") for alias in node.names)


def test_backends_list_shows_the_installed_plugin(tmp_path: Path) -> None:
    proc = subprocess.run(
        [TETHER, "backends", "list", "--json"],
        env={**os.environ, "TETHER_HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    nohup = next(item for item in json.loads(proc.stdout) if item["name"] == "nohup")
    assert nohup["config_class"] == "tether_nohup.NohupConfig"
    assert nohup["source"].startswith("tether-nohup ")
    assert nohup["usable"] is True and "reattach" in nohup["capabilities"]
    proc = subprocess.run(
        [TETHER, "backends", "create", "--backend-type", "nohup", "--with-examples"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0 and "type: nohup" in proc.stdout
