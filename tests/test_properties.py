"""Property tests: any file fed to ``load_config`` / ``load_job`` is a config or a clean error.

A clean error is a :class:`tether.ConfigError` whose message is made of short,
non-empty lines without a traceback: what the CLI prints as ``tether: error: …``.
Nothing else may escape, whatever the file holds.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import tether
from tether import BackendConfig, ConfigError, DummyConfig, Job, LocalConfig, Resources, TetherError

from .cli_support import TETHER

MAX_LINE = 300

PROPERTY = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

# -- strategies ---------------------------------------------------------------------------

FRAGMENTS = [
    "${A}",
    "${UNSET_XYZ}",
    "${",
    "$$",
    "${A:-x}",
    "${UNSET_XYZ:-d}",
    "${1X}",
    "${A-b}",
    "$",
    "}",
    "$${A}",
]
texts = st.one_of(
    st.text(),
    st.sampled_from(FRAGMENTS),
    st.lists(st.one_of(st.text(max_size=6), st.sampled_from(FRAGMENTS)), max_size=6).map("".join),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    texts,
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(texts, st.integers()), inner, max_size=4),
    ),
    max_leaves=16,
)

CONFIG_FIELDS = sorted(({*LocalConfig.model_fields, *DummyConfig.model_fields}) - {"type"})
JOB_FIELDS = sorted(Job.model_fields)
RESOURCE_FIELDS = sorted(Resources.model_fields)

_MISSING = object()


def _document(kind: object, fields: dict[Any, Any]) -> dict[Any, Any]:
    return fields if kind is _MISSING else {"type": kind, **fields}


def _fields(names: list[str], *, max_size: int = 6) -> st.SearchStrategy[dict[Any, Any]]:
    """Mostly real field names with random values, plus a few random keys."""
    known = st.dictionaries(st.sampled_from(names), values, max_size=max_size)
    other = st.dictionaries(st.one_of(texts, st.integers()), values, max_size=2)
    return st.builds(lambda a, b: {**b, **a}, known, st.one_of(st.just({}), other))


_BUILTIN_TYPES = st.sampled_from(["local", "dummy"])
config_documents = st.builds(
    _document,
    st.one_of(_BUILTIN_TYPES, _BUILTIN_TYPES, st.just(_MISSING), texts),
    _fields(CONFIG_FIELDS),
)
job_documents = st.builds(
    lambda fields, backend, resources: {**fields, **backend, **resources},
    _fields(JOB_FIELDS),
    st.one_of(st.just({}), st.fixed_dictionaries({"backend": st.one_of(config_documents, values)})),
    st.one_of(st.just({}), st.fixed_dictionaries({"resources": _fields(RESOURCE_FIELDS)})),
)
# Text that looks a little like YAML, to reach the parser's error paths more often.
YAML_BITS = [
    "type: local\n",
    "type: dummy\n",
    "timeout: ",
    "command: ",
    "env_vars:\n  K: ",
    "backend:\n  type: local\n  ",
    "- ",
    "[",
    "]",
    "{",
    "}",
    ", ",
    ": ",
    "\n",
    "  ",
    "'",
    '"',
    "#",
    "? ",
    "---\n",
    "!!binary ",
    "!!python/object:os.system ",
    "%YAML 1.1\n",
    "\t",
    "\\",
    ".nan",
    "1e400",
    "0x1F",
    "~",
]
yamlish = st.lists(st.one_of(st.sampled_from(YAML_BITS + FRAGMENTS), st.text(max_size=4))).map(
    "".join
)


# -- helpers ------------------------------------------------------------------------------


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A is set, UNSET_XYZ is not: the references the strategies draw."""
    monkeypatch.setenv("A", "alpha")
    monkeypatch.delenv("UNSET_XYZ", raising=False)


def _write(folder: str, name: str, content: str) -> Path:
    path = Path(folder) / name
    path.write_text(content, encoding="utf-8")
    return path


def _yaml(document: dict[Any, Any]) -> str:
    return yaml.safe_dump(document, sort_keys=False, allow_unicode=True)


def _json(document: dict[Any, Any]) -> str:
    return json.dumps(document, indent=1)


def assert_clean_error(exc: BaseException) -> None:
    """A TetherError made of short, non-empty lines and no traceback."""
    assert isinstance(exc, TetherError), f"{type(exc).__name__}: {exc}"
    assert isinstance(exc, ConfigError), f"{type(exc).__name__}: {exc}"
    message = str(exc)
    assert message.strip(), "empty message"
    assert "Traceback" not in message
    for line in message.splitlines():
        assert line.strip(), f"empty line in message: {message!r}"
        assert len(line) <= MAX_LINE, f"line of {len(line)} characters: {line!r}"


def check_loads(load: Callable[[Path], object], path: Path) -> None:
    """``load(path)`` returns a config (or job and config) or raises a clean error."""
    try:
        loaded = load(path)
    except TetherError as exc:
        assert_clean_error(exc)
        return
    if load is tether.load_config:
        assert isinstance(loaded, BackendConfig)
    else:
        assert isinstance(loaded, tuple)
        job, config = loaded
        assert isinstance(job, Job)
        assert config is None or isinstance(config, BackendConfig)


# -- load_config / load_job never fail badly ------------------------------------------------


@pytest.mark.usefixtures("env")
@PROPERTY
@given(text=st.one_of(st.text(), yamlish), suffix=st.sampled_from([".yml", ".yaml", ".json"]))
def test_any_text_loads_or_is_a_clean_error(text: str, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = _write(folder, f"file{suffix}", text)
        check_loads(tether.load_config, path)
        check_loads(tether.load_job, path)


@pytest.mark.usefixtures("env")
@PROPERTY
@given(document=config_documents, as_json=st.booleans())
# Pinned: non-string env values, where pydantic's locs carry its union branch names.
@example(document={"type": "local", "env_vars": {"K": 1}}, as_json=False)
@example(document={"type": "dummy", "outputs": {"a": None}, "timeout": "x"}, as_json=True)
def test_structured_config_loads_or_is_a_clean_error(
    document: dict[Any, Any], as_json: bool
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        if as_json:
            path = _write(folder, "config.json", _json(document))
        else:
            path = _write(folder, "config.yml", _yaml(document))
        check_loads(tether.load_config, path)


@pytest.mark.usefixtures("env")
@PROPERTY
@given(document=job_documents, as_json=st.booleans())
@example(document={"command": "ls", "env": {"K": [None]}}, as_json=True)
@example(
    document={"command": "ls", "backend": {"type": "local", "env_vars": {"K": 1.5}}}, as_json=False
)
def test_structured_job_loads_or_is_a_clean_error(document: dict[Any, Any], as_json: bool) -> None:
    with tempfile.TemporaryDirectory() as folder:
        if as_json:
            path = _write(folder, "job.json", _json(document))
        else:
            path = _write(folder, "job.yml", _yaml(document))
        check_loads(tether.load_job, path)


BIG_INT = "9" * 5000

HOSTILE = {
    # A YAML alias that contains itself: a recursive list.
    "recursive-alias.yml": "type: local\ncommand: &a [*a]\n",
    "recursive-job.yml": "command: ls\nresources:\n  extras: &e {self: *e}\n",
    # Integers beyond Python's int-from-string limit (4300 digits).
    "huge-int.yml": f"type: local\ntimeout: {BIG_INT}\n",
    "huge-int.json": f'{{"type": "local", "timeout": {BIG_INT}}}',
    # Newlines inside a value or a key must not break the one-line-per-problem format.
    "newline-path.yml": 'type: local\nworking_dir: "a\\n\\nb"\n',
    "newline-key.yml": 'type: local\nenv_vars:\n  "a\\n\\nb": 1\n',
    "newline-key-reference.yml": 'type: local\nenv_vars:\n  "a\\r\\rb": ${UNSET_XYZ}\n',
    # A bad value is named, not echoed in full.
    "long-memory.yml": "command: ls\nresources:\n  memory: {"
    + ", ".join(f"k{i}: {i}" for i in range(60))
    + "}\n",
    # A wrong type inside a union field must not print pydantic's internal union names.
    "union-branch.yml": "type: local\nenv_vars:\n  K: [1]\n",
    "union-branch-job.yml": "command: ls\nenv:\n  K: {a: 1}\n",
    "python-tag.yml": "type: local\ncommand: !!python/object/apply:os.system [echo hi]\n",
    "nul.yml": "type: local\ncommand: a\x00b\n",
    "bom.json": '\ufeff{"type": "local"}',
}


@pytest.mark.usefixtures("env")
@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_documents_are_clean_errors(name: str) -> None:
    """Fixed edge cases of the same contract: parser error paths, and bugs found so far."""
    with tempfile.TemporaryDirectory() as folder:
        path = _write(folder, name, HOSTILE[name])
        check_loads(tether.load_config, path)
        check_loads(tether.load_job, path)


# -- the same contract through `tether backends validate` -----------------------------------


def _accepted(path: Path) -> bool:
    try:
        tether.load_config(path)
    except Exception:
        return False
    return True


@pytest.mark.usefixtures("env")
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    document=st.one_of(
        config_documents,
        st.sampled_from(
            [
                {"type": "local"},
                {"type": "dummy", "duration": 1.5, "stdout": "${A}"},
                {"type": "local", "env_vars": {"K": "${A}"}, "command": "echo $$HOME"},
                {"type": "local", "command": "${UNSET_XYZ}"},
                {"type": "local", "timeout": 5, "shell": "maybe"},
            ]
        ),
    ),
    as_json=st.booleans(),
)
def test_cli_validate_agrees_with_load_config(document: dict[Any, Any], as_json: bool) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = _write(
            folder,
            "config.json" if as_json else "config.yml",
            _json(document) if as_json else _yaml(document),
        )
        accepted = _accepted(path)
        proc = subprocess.run(
            [str(TETHER), "backends", "validate", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            env=os.environ.copy(),
            check=False,
        )
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output, output
    for line in proc.stderr.splitlines():
        if line.strip():
            assert line.startswith("tether: error:"), proc.stderr
    if accepted:
        assert proc.returncode == 0, output
        assert "valid" in proc.stdout
    else:
        assert proc.returncode == 2, output
        assert proc.stderr.strip(), "a rejected file must say why"
    if accepted:
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == f"{path}: valid {document['type']} config"
    else:
        assert proc.returncode == 2, output
        assert proc.stderr.strip() and proc.stdout == ""
