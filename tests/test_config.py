"""Backend configs, config/job files and the registry."""

from __future__ import annotations

import inspect
import json
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

import tether
from tether import ConfigError, DummyConfig, LocalConfig, UnknownBackendError


def test_base_fields_follow_rompy_rules(tmp_path: Path) -> None:
    assert LocalConfig().timeout == 3600
    LocalConfig(timeout=60)
    LocalConfig(timeout=86400)
    with pytest.raises(ValidationError, match="greater than or equal to 60"):
        LocalConfig(timeout=30)
    with pytest.raises(ValidationError, match="less than or equal to 86400"):
        LocalConfig(timeout=86401)
    with pytest.raises(ValidationError, match="non-empty"):
        LocalConfig(env_vars={"": "x"})
    with pytest.raises(ValidationError, match=r"Working directory .* does not exist"):
        LocalConfig(working_dir=tmp_path / "missing")
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(ValidationError, match="is not a directory"):
        LocalConfig(working_dir=afile)
    assert LocalConfig(working_dir=tmp_path).working_dir == tmp_path.resolve()
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        LocalConfig(timeoutt=100)  # type: ignore[call-arg]


def test_create_returns_the_backend() -> None:
    assert isinstance(LocalConfig().create(), tether.LocalBackend)
    assert isinstance(DummyConfig().create(), tether.DummyBackend)


def test_builtins_are_registered_as_entry_points() -> None:
    names = {ep.name: ep.value for ep in entry_points(group="tether.backends")}
    assert names["local"] == "tether.backends.local:LocalConfig"
    assert names["dummy"] == "tether.backends.dummy:DummyConfig"
    assert tether.backend_configs()["local"] is LocalConfig


def test_load_config_yaml_and_json(tmp_path: Path) -> None:
    yml = tmp_path / "local.yml"
    yml.write_text("type: local\ntimeout: 7200\nenv_vars:\n  OMP_NUM_THREADS: '4'\n")
    config = tether.load_config(yml)
    assert isinstance(config, LocalConfig) and config.timeout == 7200
    js = tmp_path / "dummy.json"
    js.write_text(json.dumps({"type": "dummy", "duration": 1.5}))
    assert tether.load_config(js) == DummyConfig(duration=1.5)


def test_load_config_errors_name_file_line_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("type: local\n\ntimeout: 5\nshell: maybe\n")
    with pytest.raises(ConfigError) as info:
        tether.load_config(bad)
    lines = str(info.value).splitlines()
    assert lines[0].startswith(f"{bad}:3: timeout: ")
    assert lines[1].startswith(f"{bad}:4: shell: ")

    broken = tmp_path / "broken.yml"
    broken.write_text("type: local\ntimeout: [1, 2\n")
    with pytest.raises(ConfigError, match=rf"{broken}:\d+: invalid YAML"):
        tether.load_config(broken)

    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"type": "local",\n "timeout": }')
    with pytest.raises(ConfigError, match=rf"{bad_json}:2: invalid JSON"):
        tether.load_config(bad_json)

    unknown = tmp_path / "unknown.yml"
    unknown.write_text("type: nope\n")
    with pytest.raises(UnknownBackendError, match=r"known types: .*dummy.*local"):
        tether.load_config(unknown)

    untyped = tmp_path / "untyped.yml"
    untyped.write_text("timeout: 100\n")
    with pytest.raises(ConfigError, match="needs a 'type' field"):
        tether.load_config(untyped)

    typo = tmp_path / "typo.yml"
    typo.write_text("type: local\ncomand: ls\n")
    with pytest.raises(ConfigError, match=r"typo.yml:2: comand: unknown field"):
        tether.load_config(typo)

    with pytest.raises(ConfigError, match="does not exist"):
        tether.load_config(tmp_path / "absent.yml")
    (tmp_path / "list.yml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        tether.load_config(tmp_path / "list.yml")


def test_load_job_resolves_paths_and_inline_backend(tmp_path: Path) -> None:
    (tmp_path / "data.txt").write_text("x")
    job_file = tmp_path / "job.yml"
    job_file.write_text(
        "name: demo\ncommand: cat data.txt\ninputs: [data.txt]\n"
        "backend:\n  type: dummy\n  duration: 2\n"
    )
    job, config = tether.load_job(job_file)
    assert job.inputs == [tmp_path / "data.txt"]
    assert config == DummyConfig(duration=2)

    bad = tmp_path / "bad.yml"
    bad.write_text("name: demo\ncommand: ls\nbackend:\n  type: local\n  timeout: 1\n")
    with pytest.raises(ConfigError, match=r"bad.yml:5: backend.timeout"):
        tether.load_job(bad)


def test_job_and_resources_validation() -> None:
    assert tether.Resources(walltime="01:00:05").walltime == 3605
    assert tether.Resources(walltime="1-00:00:00").walltime == 86400
    with pytest.raises(ValidationError, match="walltime"):
        tether.Resources(walltime="soon")
    with pytest.raises(ValidationError, match="must not be empty"):
        tether.Job(command=[])
    with pytest.raises(ValidationError, match="non-empty"):
        tether.Job(command="ls", env={"": "x"})
    job = tether.Job(command="ls", env={"A": "1", "B": SecretStr("hidden")})
    assert job.resolved_env() == {"A": "1", "B": "hidden"}
    record = job.to_record()
    assert record["env"] == {"A": "1"} and record["secret_env"] == ["B"]
    assert "hidden" not in json.dumps(record)


def test_config_record_round_trip_skips_folder_checks(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    config = LocalConfig(working_dir=work, env_vars={"K": SecretStr("v"), "P": "p"})
    record = config.to_record()
    assert record["env_vars"] == {"P": "p"} and record["secret_env_vars"] == ["K"]
    work.rmdir()  # the folder went away since the run was submitted
    restored = LocalConfig.from_record(record)
    assert restored.working_dir == work.resolve()


def test_public_api_is_exactly_all() -> None:
    public = {
        name
        for name in dir(tether)
        if not name.startswith("_")
        and not inspect.ismodule(getattr(tether, name))
        and name != "annotations"  # the __future__ import
    }
    assert set(tether.__all__) - {"__version__"} == public
    for name in tether.__all__:
        assert getattr(tether, name) is not None


def test_errors_form_one_tree() -> None:
    for name in tether.__all__:
        obj = getattr(tether, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, tether.TetherError), name
    assert issubclass(tether.ConfigError, ValueError)
    assert issubclass(tether.WaitTimeout, TimeoutError)


def test_state_machine() -> None:
    from tether import RunState as S

    assert [s for s in S if not s.is_terminal] == [S.PENDING, S.RUNNING]
    assert S.PENDING.can_become(S.RUNNING) and S.RUNNING.can_become(S.SUCCEEDED)
    assert not S.RUNNING.can_become(S.PENDING)
    assert not S.SUCCEEDED.can_become(S.FAILED)
    handle = tether.DummyRunHandle(
        run_id="r1",
        job=tether.Job(),
        config=DummyConfig(),
        run_dir=Path("/nonexistent"),
        submitted_at=0,
        timeout=60,
    )
    handle._set_state(S.SUCCEEDED)
    with pytest.raises(tether.InvalidTransitionError, match="from SUCCEEDED to RUNNING"):
        handle._set_state(S.RUNNING)
