"""Backend discovery: ``list_backends``, broken plugins and ``recommended_backend``."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import tether
from tether import (
    Availability,
    BackendInfo,
    BackendUnavailableError,
    ConfigError,
    DaskConfig,
    DockerConfig,
    DummyConfig,
    Job,
    LocalConfig,
    Resources,
    SlurmConfig,
    UnknownBackendError,
)
from tether.registry import broken_backends, config_class, reload_plugins

from .cli_support import TETHER


def _by_name(infos: list[BackendInfo]) -> dict[str, BackendInfo]:
    return {info.name: info for info in infos}


def _unusable(cls: type[object]) -> Availability:
    return Availability(False, "disabled by the test")


# -- list_backends --------------------------------------------------------------------


def test_list_backends_lists_builtins_with_their_classes() -> None:
    infos = tether.list_backends()
    names = [info.name for info in infos]
    assert names == sorted(names)
    found = _by_name(infos)
    for name, cls in (("local", LocalConfig), ("dummy", DummyConfig)):
        info = found[name]
        assert info.config_class is cls
        assert info.capabilities == cls.capabilities
        assert info.source.startswith("tether ")  # the distribution that registered it
        assert info.error is None and info.availability is None  # not checked by default
        assert info.usable and info.reason == ""
    assert "commands" in found["local"].capabilities
    assert "simulated" in found["dummy"].capabilities
    assert "simulated" not in found["local"].capabilities
    assert found["local"].to_json()["config_class"] == "tether.backends.local.config.LocalConfig"
    assert found["local"].to_json()["usable"] is None  # unknown until checked


def test_check_fills_availability() -> None:
    infos = tether.list_backends(check=True)
    assert all(info.availability is not None for info in infos)
    found = _by_name(infos)
    assert found["dummy"].availability == Availability(True)
    # The local backend needs Linux; the test suite runs there.
    assert found["local"].usable, found["local"].reason
    assert found["local"].to_json()["usable"] is True


def test_available_only_implies_checking(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(LocalConfig, "availability", classmethod(_unusable))
    # Unchecked, local is listed and looks fine; checked, it says why it is not.
    assert _by_name(tether.list_backends())["local"].availability is None
    local = _by_name(tether.list_backends(check=True))["local"]
    assert not local.usable and local.reason == "disabled by the test"
    assert local.to_json()["usable"] is False

    available = tether.list_backends(available_only=True)
    assert "local" not in _by_name(available)
    assert "dummy" in _by_name(available)
    assert all(info.availability is not None and info.usable for info in available)


def test_a_failing_availability_check_is_reported_not_raised(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def explode(cls: type[object]) -> Availability:
        raise RuntimeError("boom")

    monkeypatch.setattr(DummyConfig, "availability", classmethod(explode))
    dummy = _by_name(tether.list_backends(check=True))["dummy"]
    assert not dummy.usable
    assert "availability check failed" in dummy.reason and "boom" in dummy.reason


# -- broken plugins ---------------------------------------------------------------------


def _fake_distribution(root: Path) -> Path:
    """An installed-looking distribution whose two backend entry points are broken."""
    info = root / "broken_plugin-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[tether.backends]\nbroken = no_such_module_xyz:Config\nnotconfig = json:loads\n"
    )
    return root


@pytest.fixture
def broken_plugin(tmp_path: Path) -> Iterator[Path]:
    """The fake distribution on sys.path; plugins are rediscovered before and after."""
    root = _fake_distribution(tmp_path / "site")
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(root))
        reload_plugins()
        yield root
    # The path is gone again: forget the broken plugin so other tests never see it.
    reload_plugins()


@pytest.mark.usefixtures("broken_plugin")
def test_broken_plugins_are_listed_with_their_error() -> None:
    found = _by_name(tether.list_backends())
    broken, notconfig = found["broken"], found["notconfig"]
    assert broken.config_class is None and notconfig.config_class is None
    assert broken.error is not None and "ModuleNotFoundError" in broken.error
    assert "no_such_module_xyz" in broken.error
    assert notconfig.error is not None and "not a BackendConfig" in notconfig.error
    for info in (broken, notconfig):
        assert not info.usable
        assert info.source == "broken-plugin 0.1"
        assert info.reason.startswith("plugin failed to load: ")
        assert info.to_json()["usable"] is False
        assert "\n" not in info.reason
    assert set(broken_backends()) == {"broken", "notconfig"}

    # A broken plugin never hides the working ones.
    assert found["local"].config_class is LocalConfig
    assert found["dummy"].config_class is DummyConfig
    assert config_class("local") is LocalConfig

    # Checking does not make them usable, and available_only leaves them out.
    checked = _by_name(tether.list_backends(check=True))
    assert not checked["broken"].usable and not checked["notconfig"].usable
    available = _by_name(tether.list_backends(available_only=True))
    assert "broken" not in available and "notconfig" not in available
    assert "local" in available


@pytest.mark.usefixtures("broken_plugin")
def test_loading_a_config_of_a_broken_backend_says_why(tmp_path: Path) -> None:
    path = tmp_path / "c.yml"
    path.write_text("type: broken\n")
    with pytest.raises(ConfigError) as info:
        tether.load_config(path)
    assert isinstance(info.value, UnknownBackendError)
    message = str(info.value)
    assert "'broken' failed to load" in message
    assert "ModuleNotFoundError" in message and "no_such_module_xyz" in message

    path.write_text("type: notconfig\n")
    with pytest.raises(UnknownBackendError, match=r"'notconfig' failed to load.*BackendConfig"):
        tether.load_config(path)

    job = tmp_path / "job.yml"
    job.write_text("command: ls\nbackend:\n  type: broken\n")
    with pytest.raises(ConfigError, match=r"backend: .*'broken' failed to load"):
        tether.load_job(job)

    # Working backends still load from files.
    path.write_text("type: dummy\nduration: 1\n")
    assert tether.load_config(path) == DummyConfig(duration=1)


@pytest.mark.usefixtures("broken_plugin")
def test_unknown_type_lists_the_known_ones(tmp_path: Path) -> None:
    path = tmp_path / "c.yml"
    path.write_text("type: nosuchbackend\n")
    with pytest.raises(UnknownBackendError) as info:
        tether.load_config(path)
    message = str(info.value)
    assert "Unknown backend type 'nosuchbackend'" in message
    known = message.split("known types:", 1)[1]
    assert "local" in known and "dummy" in known


def test_broken_plugin_is_forgotten_once_its_path_is_gone(tmp_path: Path) -> None:
    """The fixture's teardown must leave later tests a clean registry."""
    root = _fake_distribution(tmp_path / "other")
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(root))
        reload_plugins()
        assert "broken" in broken_backends()
    reload_plugins()
    assert "broken" not in broken_backends()
    assert "broken" not in _by_name(tether.list_backends())


def test_cli_backends_list_shows_broken_plugins(tmp_path: Path) -> None:
    """``tether backends list`` in a process that sees the broken distribution."""
    root = _fake_distribution(tmp_path / "other")
    pythonpath = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))
    proc = subprocess.run(
        [str(TETHER), "backends", "list"],
        env={**os.environ, "PYTHONPATH": pythonpath},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    broken = [line for line in lines if "no_such_module_xyz" in line]
    assert broken and all("broken" in line for line in broken), proc.stdout
    notconfig = [line for line in lines if "notconfig" in line]
    assert notconfig and "BackendConfig" in notconfig[0], proc.stdout
    assert any("local" in line for line in lines) and any("dummy" in line for line in lines)


# -- recommended_backend ------------------------------------------------------------------


def test_plain_command_job_gets_local() -> None:
    choice = tether.recommended_backend(Job(command="echo hi"))
    assert choice.name == "local" and choice.config_class is LocalConfig
    assert isinstance(choice.reason, str) and "'local'" in choice.reason
    assert "cluster" not in choice.reason
    assert "dummy" not in choice.reason  # simulated backends are not even alternatives


def test_job_too_big_for_here_still_gets_local_with_a_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(SlurmConfig, "availability", classmethod(_unusable))
    cores = os.cpu_count() or 1
    choice = tether.recommended_backend(
        Job(command="mpirun model", resources=Resources(cpus=cores + 1))
    )
    assert choice.name == "local"
    assert "no cluster backend is usable" in choice.reason
    assert f"{cores + 1} CPUs" in choice.reason


@pytest.mark.slurm
@pytest.mark.usefixtures("slurm_service")
def test_job_too_big_for_here_goes_to_a_usable_cluster() -> None:
    cores = os.cpu_count() or 1
    choice = tether.recommended_backend(Job(command="mpirun model", resources={"cpus": cores + 1}))
    assert choice.name == "slurm"


@pytest.mark.slurm
@pytest.mark.usefixtures("slurm_service")
def test_a_cluster_without_gpus_does_not_claim_them() -> None:
    infos = _by_name(tether.list_backends(check=True))
    assert "gpus" in SlurmConfig.capabilities  # it can, where the nodes have GPUs
    assert "gpus" not in infos["slurm"].capabilities  # this cluster's nodes have none


def test_gpu_job_has_no_backend_and_the_error_says_why() -> None:
    job = Job(name="train", command="python train.py", resources=Resources(gpus=1))
    with pytest.raises(BackendUnavailableError) as info:
        tether.recommended_backend(job)
    message = str(info.value)
    assert "'train'" in message
    assert "local: cannot provide gpus" in message


def test_rejection_message_accounts_for_every_backend() -> None:
    """The docstring promises why *each* backend was rejected, the simulated one too."""
    job = Job(name="train", command="python train.py", resources=Resources(gpus=1))
    with pytest.raises(BackendUnavailableError) as info:
        tether.recommended_backend(job)
    message = str(info.value)
    missing = [info.name for info in tether.list_backends() if f"{info.name}: " not in message]
    assert not missing, f"no reason given for {missing}: {message}"


def test_simulated_backend_is_never_recommended(monkeypatch: pytest.MonkeyPatch) -> None:
    jobs = [
        Job(command="ls"),
        Job(command=["true"], resources=Resources(cpus=1, memory="1m", walltime=60)),
    ]
    for job in jobs:
        assert tether.recommended_backend(job).name != "dummy"
    # Even when the dummy backend is the only usable one, it is not picked.
    monkeypatch.setattr(LocalConfig, "availability", classmethod(_unusable))
    monkeypatch.setattr(DockerConfig, "availability", classmethod(_unusable))
    monkeypatch.setattr(SlurmConfig, "availability", classmethod(_unusable))
    monkeypatch.setattr(DaskConfig, "availability", classmethod(_unusable))
    with pytest.raises(BackendUnavailableError, match="local: disabled by the test"):
        tether.recommended_backend(Job(command="ls"))
