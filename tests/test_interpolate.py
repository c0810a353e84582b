"""``${VAR}`` references in config and job files (``tether._interpolate``).

References are resolved when a file is loaded; values that use one under an
environment mapping become secrets that never reach records or reprs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import SecretStr

import tether
from tether import ConfigError, DummyConfig, LocalConfig

SECRET = "s3cr3t-value-4f9a"


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """A known environment: A and SECRET_TOKEN set, EMPTY empty, UNSET_XYZ unset."""
    monkeypatch.setenv("A", "alpha")
    monkeypatch.setenv("SECRET_TOKEN", SECRET)
    monkeypatch.setenv("EMPTY", "")
    monkeypatch.delenv("UNSET_XYZ", raising=False)
    return monkeypatch


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _command(tmp_path: Path, value: str) -> str | list[str] | None:
    """``command`` of a local config file whose command is ``value`` (a YAML scalar)."""
    config = tether.load_config(_write(tmp_path, "c.yml", f"type: local\ncommand: {value}\n"))
    assert isinstance(config, LocalConfig)
    return config.command


@pytest.mark.usefixtures("env")
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("'${A}'", "alpha"),
        ("'run ${A} and ${A}'", "run alpha and alpha"),
        ("'${UNSET_XYZ:-fallback}'", "fallback"),
        ("'${EMPTY:-fallback}'", "fallback"),
        ("'${A:-fallback}'", "alpha"),
        ("'${UNSET_XYZ:-}'", ""),
        ("'${EMPTY}'", ""),
        ("'cost: $$5'", "cost: $5"),
        ("'$${A}'", "${A}"),
        ("'$$$${A}'", "$${A}"),
        # A bare $NAME is left for the shell that runs the command.
        ("'echo $HOME $A'", "echo $HOME $A"),
        ("'50$'", "50$"),
    ],
)
def test_references_resolve(tmp_path: Path, value: str, expected: str) -> None:
    assert _command(tmp_path, value) == expected


@pytest.mark.usefixtures("env")
@pytest.mark.parametrize("bad", ["${", "x ${ y", "${1X}", "${A-b}", "${A:b}", "${}", "${A"])
def test_malformed_reference_names_file_line_and_field(tmp_path: Path, bad: str) -> None:
    path = _write(
        tmp_path,
        "bad.yml",
        f"type: local\ntimeout: 120\ncommand:\n  - echo\n  - {json.dumps(bad)}\n",
    )
    with pytest.raises(ConfigError) as info:
        tether.load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}:5: command.1: malformed reference")
    assert len(message.splitlines()) == 1
    assert "$$" in message  # says how to write a literal $


@pytest.mark.usefixtures("env")
def test_missing_variable_is_a_one_line_error(tmp_path: Path) -> None:
    path = _write(
        tmp_path, "job.yml", "name: demo\ncommand: ls\nenv:\n  OTHER: x\n  TOKEN: ${UNSET_XYZ}\n"
    )
    with pytest.raises(ConfigError) as info:
        tether.load_job(path)
    message = str(info.value)
    assert message.startswith(f"{path}:5: env.TOKEN: ")
    assert "'UNSET_XYZ' is not set" in message
    assert "${UNSET_XYZ:-" in message  # and how to give a default
    assert "\n" not in message


@pytest.mark.usefixtures("env")
def test_missing_variable_in_backend_of_job_names_nested_field(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "job.yml",
        "command: ls\nbackend:\n  type: dummy\n  outputs:\n    out.txt: ${UNSET_XYZ}\n",
    )
    with pytest.raises(ConfigError, match=r"job\.yml:5: backend\.outputs\.out\.txt: .*UNSET_XYZ"):
        tether.load_job(path)


@pytest.mark.usefixtures("env")
def test_env_vars_references_become_secrets(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "c.yml",
        "type: local\n"
        "command: echo ${A}\n"
        "env_vars:\n"
        "  TOKEN: ${SECRET_TOKEN}\n"
        "  URL: https://user:${SECRET_TOKEN}@example.org\n"
        "  PLAIN: literal\n"
        "  PRICE: $$5\n",
    )
    config = tether.load_config(path)
    # Elsewhere a reference is a plain resolved string.
    assert isinstance(config, LocalConfig) and config.command == "echo alpha"
    assert isinstance(config.env_vars["TOKEN"], SecretStr)
    assert isinstance(config.env_vars["URL"], SecretStr)
    # No reference, no secret ($$ is an escape, not a reference).
    assert config.env_vars["PLAIN"] == "literal"
    assert config.env_vars["PRICE"] == "$5"
    assert config.resolved_env() == {
        "TOKEN": SECRET,
        "URL": f"https://user:{SECRET}@example.org",
        "PLAIN": "literal",
        "PRICE": "$5",
    }
    record = config.to_record()
    assert record["env_vars"] == {"PLAIN": "literal", "PRICE": "$5"}
    assert record["secret_env_vars"] == ["TOKEN", "URL"]
    for shown in (json.dumps(record), repr(config), str(config)):
        assert SECRET not in shown


@pytest.mark.usefixtures("env")
def test_job_env_and_inline_backend_env_vars_become_secrets(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "job.yml",
        "name: demo\n"
        "command: [echo, '${A}']\n"
        "env:\n"
        "  TOKEN: ${SECRET_TOKEN}\n"
        "  MODE: fast\n"
        "backend:\n"
        "  type: dummy\n"
        "  stdout: ${A}\n"
        "  env_vars:\n"
        "    API_KEY: key-${SECRET_TOKEN}\n"
        "    LEVEL: '3'\n",
    )
    job, config = tether.load_job(path)
    assert job.command == ["echo", "alpha"]
    assert isinstance(job.env["TOKEN"], SecretStr) and job.env["MODE"] == "fast"
    assert job.resolved_env() == {"TOKEN": SECRET, "MODE": "fast"}
    assert isinstance(config, DummyConfig) and config.stdout == "alpha"
    assert isinstance(config.env_vars["API_KEY"], SecretStr) and config.env_vars["LEVEL"] == "3"
    assert config.resolved_env()["API_KEY"] == f"key-{SECRET}"
    job_record, config_record = job.to_record(), config.to_record()
    assert job_record["secret_env"] == ["TOKEN"]
    assert config_record["secret_env_vars"] == ["API_KEY"]
    for shown in (
        json.dumps(job_record),
        json.dumps(config_record),
        repr(job),
        repr(config),
        str(job),
        str(config),
    ):
        assert SECRET not in shown


@pytest.mark.usefixtures("env")
def test_references_outside_env_mappings_are_not_secret(tmp_path: Path) -> None:
    """Only direct values of env mappings are secret, not look-alikes elsewhere."""
    path = _write(
        tmp_path,
        "job.yml",
        "command: echo\nresources:\n  extras:\n    env: {K: '${A}'}\n    env_vars: {K: '${A}'}\n",
    )
    job, _ = tether.load_job(path)
    assert job.resources.extras == {"env": {"K": "alpha"}, "env_vars": {"K": "alpha"}}


@pytest.mark.usefixtures("env")
def test_keys_are_never_interpolated(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "c.yml",
        "type: dummy\nenv_vars:\n  ${A}: x\n  $${B: y\noutputs:\n  ${UNSET_XYZ}.txt: ${A}\n",
    )
    config = tether.load_config(path)
    assert isinstance(config, DummyConfig)
    assert config.env_vars == {"${A}": "x", "$${B": "y"}
    assert config.outputs == {"${UNSET_XYZ}.txt": "alpha"}


@pytest.mark.usefixtures("env")
def test_lists_and_nested_mappings_are_resolved(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "job.yml",
        "command:\n"
        "  - run\n"
        "  - --name=${A}\n"
        "  - ${UNSET_XYZ:-default}\n"
        "outputs: ['${A}/*.nc']\n"
        "resources:\n"
        "  memory: ${MEM:-2g}\n"
        "  extras:\n"
        "    nested: {deeper: ['${A}', {leaf: '$${A}'}], n: 3}\n",
    )
    job, config = tether.load_job(path)
    assert config is None
    assert job.command == ["run", "--name=alpha", "default"]
    assert job.outputs == ["alpha/*.nc"]
    assert job.resources.memory == "2g"
    assert job.resources.extras == {"nested": {"deeper": ["alpha", {"leaf": "${A}"}], "n": 3}}


def test_references_in_non_string_fields_resolve_before_validation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUN_TIMEOUT", "7200")
    monkeypatch.setenv("SHELL_MODE", "false")
    path = _write(tmp_path, "c.yml", "type: local\ntimeout: ${RUN_TIMEOUT}\nshell: ${SHELL_MODE}\n")
    config = tether.load_config(path)
    assert isinstance(config, LocalConfig)
    assert config.timeout == 7200 and config.shell is False

    monkeypatch.setenv("RUN_TIMEOUT", "5")
    with pytest.raises(ConfigError, match=r"c\.yml:2: timeout: .*greater than or equal to 60"):
        tether.load_config(path)


@pytest.mark.usefixtures("env")
def test_json_config_files_resolve_the_same(tmp_path: Path) -> None:
    data = {
        "type": "local",
        "command": ["echo", "${A}", "$${A}", "${UNSET_XYZ:-d}"],
        "env_vars": {"TOKEN": "${SECRET_TOKEN}", "PLAIN": "p", "${A}": "key"},
    }
    path = _write(tmp_path, "c.json", json.dumps(data, indent=2))
    config = tether.load_config(path)
    assert isinstance(config, LocalConfig)
    assert config.command == ["echo", "alpha", "${A}", "d"]
    assert isinstance(config.env_vars["TOKEN"], SecretStr)
    assert config.env_vars["PLAIN"] == "p" and config.env_vars["${A}"] == "key"
    assert SECRET not in json.dumps(config.to_record()) and SECRET not in repr(config)

    missing = _write(tmp_path, "m.json", json.dumps({"type": "local", "command": "${UNSET_XYZ}"}))
    with pytest.raises(ConfigError) as info:
        tether.load_config(missing)
    message = str(info.value)
    assert message.startswith(f"{missing}")
    assert "command: " in message and "'UNSET_XYZ' is not set" in message
    assert "\n" not in message

    malformed = _write(tmp_path, "b.json", json.dumps({"type": "dummy", "stdout": "${1X}"}))
    with pytest.raises(ConfigError, match=r"b\.json.*stdout: malformed reference"):
        tether.load_config(malformed)


@pytest.mark.usefixtures("env")
def test_resolution_uses_the_environment_at_load_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write(tmp_path, "c.yml", "type: local\ncommand: ${A}\n")
    first = tether.load_config(path)
    monkeypatch.setenv("A", "beta")
    second = tether.load_config(path)
    assert isinstance(first, LocalConfig) and isinstance(second, LocalConfig)
    assert (first.command, second.command) == ("alpha", "beta")
