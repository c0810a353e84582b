"""Cache keys: what decides them, what never does, and that they are stable everywhere."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

import tether.cache.key as key_module
from tether import (
    BackendConfig,
    CachedBackend,
    DirectoryStore,
    DummyConfig,
    Job,
    LocalConfig,
    Resources,
    SQLiteStore,
    SubmitError,
    load_config,
)
from tether.cache import CacheStore, default_key
from tether.job import public_env, secret_keys

from .conftest import run_python

pytestmark = pytest.mark.anyio


def key(job: Job, config: BackendConfig | None = None, version: str = "") -> str:
    """The default key of ``job`` on a backend with ``config`` (LocalConfig() by default)."""
    return default_key(job, (config or LocalConfig()).cache_fields(), version)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """An input file of the base job."""
    path = tmp_path / "inputs" / "grid.dat"
    path.parent.mkdir()
    path.write_bytes(b"0123456789" * 100)
    return path


@pytest.fixture
def job(data: Path) -> Job:
    """A job with something in every field a key reads."""
    return Job(
        name="sim",
        command="simulate --steps 3",
        env={"GRID": "coarse", "THREADS": "4", "TOKEN": SecretStr("first-secret")},
        inputs=[data],
        outputs=["*.nc"],
        resources=Resources(cpus=2, memory="2g", walltime=600, extras={"queue": "short"}),
    )


# -- what changes a key --------------------------------------------------------------

JOB_CHANGES: dict[str, dict[str, Any]] = {
    "command": {"command": "simulate --steps 4"},
    "command as argv": {"command": ["simulate", "--steps", "3"]},
    "env value": {"env": {"GRID": "fine", "THREADS": "4", "TOKEN": SecretStr("first-secret")}},
    "env added": {
        "env": {"GRID": "coarse", "THREADS": "4", "OMP": "1", "TOKEN": SecretStr("first-secret")}
    },
    "secret env name": {
        "env": {"GRID": "coarse", "THREADS": "4", "API_KEY": SecretStr("first-secret")}
    },
    "secret made public": {"env": {"GRID": "coarse", "THREADS": "4", "TOKEN": "first-secret"}},
    "output globs": {"outputs": ["*.nc", "*.log"]},
    "workdir": {"workdir": Path("/srv/data")},
    "cpus": {"resources": Resources(cpus=8, memory="2g", walltime=600, extras={"queue": "short"})},
    "extras": {"resources": Resources(cpus=2, memory="2g", walltime=600, extras={"queue": "long"})},
}


@pytest.mark.parametrize("change", JOB_CHANGES.values(), ids=JOB_CHANGES.keys())
def test_result_relevant_job_fields_change_the_key(job: Job, change: dict[str, Any]) -> None:
    assert key(job.model_copy(update=change)) != key(job)


CONFIG_CHANGES: dict[str, tuple[BackendConfig, BackendConfig]] = {
    "local shell": (LocalConfig(), LocalConfig(shell=False)),
    "local command": (LocalConfig(), LocalConfig(command="simulate")),
    "local capture_output": (LocalConfig(), LocalConfig(capture_output=False)),
    "local env_vars value": (LocalConfig(env_vars={"A": "1"}), LocalConfig(env_vars={"A": "2"})),
    "local secret env_vars name": (
        LocalConfig(env_vars={"A": SecretStr("s")}),
        LocalConfig(env_vars={"B": SecretStr("s")}),
    ),
    "local working_dir": (LocalConfig(), LocalConfig(working_dir=Path("/"))),
    "dummy stdout": (DummyConfig(), DummyConfig(stdout="hello\n")),
    "dummy outcome": (DummyConfig(), DummyConfig(outcome="failed")),
    "dummy outputs": (DummyConfig(), DummyConfig(outputs={"a.txt": "A"})),
    "dummy exit_code": (DummyConfig(), DummyConfig(exit_code=3)),
    "backend type": (LocalConfig(), DummyConfig()),
}


@pytest.mark.parametrize(("before", "after"), CONFIG_CHANGES.values(), ids=CONFIG_CHANGES.keys())
def test_result_relevant_config_fields_change_the_key(
    job: Job, before: BackendConfig, after: BackendConfig
) -> None:
    assert key(job, after) != key(job, before)


def test_one_byte_of_an_input_changes_the_key(job: Job, data: Path) -> None:
    before = key(job)
    content = bytearray(data.read_bytes())
    content[500] ^= 1
    data.write_bytes(bytes(content))
    assert key(job) != before


def test_a_byte_deep_in_an_input_folder_changes_the_key(tmp_path: Path) -> None:
    folder = tmp_path / "mesh"
    (folder / "a" / "b").mkdir(parents=True)
    (folder / "top.txt").write_text("top")
    (folder / "a" / "b" / "deep.txt").write_text("deep")
    job = Job(command="x", inputs=[folder])
    before = key(job)
    (folder / "a" / "b" / "deep.txt").write_text("deeP")
    assert key(job) != before


def test_input_name_changes_the_key(job: Job, data: Path) -> None:
    renamed = data.with_name("other.dat")
    renamed.write_bytes(data.read_bytes())
    assert key(job.model_copy(update={"inputs": [renamed]})) != key(job)


def test_cache_version_and_format_change_the_key(job: Job, monkeypatch: pytest.MonkeyPatch) -> None:
    base = key(job)
    assert key(job, version="v2") != base
    monkeypatch.setattr(key_module, "CACHE_FORMAT", key_module.CACHE_FORMAT + 1)
    assert key(job) != base


# -- what never changes a key -----------------------------------------------------------

JOB_KEEPS: dict[str, dict[str, Any]] = {
    "name": {"name": "renamed"},
    "walltime": {
        "resources": Resources(cpus=2, memory="2g", walltime=5, extras={"queue": "short"})
    },
    "no walltime": {"resources": Resources(cpus=2, memory="2g", extras={"queue": "short"})},
    "secret value": {
        "env": {"GRID": "coarse", "THREADS": "4", "TOKEN": SecretStr("second-secret")}
    },
    "env order": {"env": {"TOKEN": SecretStr("first-secret"), "THREADS": "4", "GRID": "coarse"}},
}


@pytest.mark.parametrize("change", JOB_KEEPS.values(), ids=JOB_KEEPS.keys())
def test_fields_that_cannot_change_the_result_keep_the_key(
    job: Job, change: dict[str, Any]
) -> None:
    assert key(job.model_copy(update=change)) == key(job)


CONFIG_KEEPS: dict[str, tuple[BackendConfig, BackendConfig]] = {
    "local timeout": (LocalConfig(), LocalConfig(timeout=60)),
    "local runs_dir": (LocalConfig(), LocalConfig(runs_dir=Path("/elsewhere/runs"))),
    "local cancel_grace": (LocalConfig(), LocalConfig(cancel_grace=0.5)),
    "local secret env_vars value": (
        LocalConfig(env_vars={"A": SecretStr("one")}),
        LocalConfig(env_vars={"A": SecretStr("two")}),
    ),
    "dummy timeout": (DummyConfig(), DummyConfig(timeout=86400)),
    "dummy runs_dir": (DummyConfig(), DummyConfig(runs_dir=Path("/elsewhere/runs"))),
}


@pytest.mark.parametrize(("before", "after"), CONFIG_KEEPS.values(), ids=CONFIG_KEEPS.keys())
def test_config_fields_that_cannot_change_the_result_keep_the_key(
    job: Job, before: BackendConfig, after: BackendConfig
) -> None:
    assert key(job, after) == key(job, before)


def test_touching_an_input_keeps_the_key(job: Job, data: Path) -> None:
    before = key(job)
    os.utime(data, (1_000_000_000, 1_000_000_000))
    data.chmod(0o600)
    assert key(job) == before


def test_the_same_input_elsewhere_keeps_the_key(job: Job, data: Path, tmp_path: Path) -> None:
    moved = tmp_path / "copy" / data.name
    moved.parent.mkdir()
    moved.write_bytes(data.read_bytes())
    assert key(job.model_copy(update={"inputs": [moved]})) == key(job)


def test_input_folder_creation_order_keeps_the_key(tmp_path: Path) -> None:
    first, second = tmp_path / "one" / "mesh", tmp_path / "two" / "mesh"
    for folder, names in ((first, "abc"), (second, "cba")):
        folder.mkdir(parents=True)
        for name in names:
            (folder / f"{name}.txt").write_text(name * 3)
    assert key(Job(command="x", inputs=[first])) == key(Job(command="x", inputs=[second]))


def test_missing_input_is_a_submit_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.dat"
    with pytest.raises(SubmitError, match=r"nowhere\.dat") as info:
        key(Job(command="x", inputs=[missing]))
    assert "\n" not in str(info.value)


# -- properties -----------------------------------------------------------------------

VALUES = st.one_of(st.text("ab", max_size=2), st.builds(SecretStr, st.text("ab", max_size=2)))
ENVS = st.dictionaries(st.sampled_from(["A", "B", "C"]), VALUES, max_size=3)


@given(first=ENVS, second=ENVS)
def test_env_decides_the_key_by_public_values_and_secret_names(
    first: dict[str, str | SecretStr], second: dict[str, str | SecretStr]
) -> None:
    same = public_env(first) == public_env(second) and secret_keys(first) == secret_keys(second)
    equal_keys = key(Job(command="x", env=first)) == key(Job(command="x", env=second))
    assert equal_keys == same


@given(
    name=st.from_regex(r"[a-z][a-z0-9-]{0,12}", fullmatch=True),
    walltime=st.none() | st.floats(1, 1e6),
    timeout=st.integers(60, 86400),
    grace=st.floats(0, 600),
    runs_dir=st.none() | st.sampled_from(["/a/runs", "~/runs", "relative/runs"]),
    secret=st.text(max_size=20),
)
def test_key_ignores_name_walltime_timeout_runs_dir_and_secret_values(
    name: str, walltime: float | None, timeout: int, grace: float, runs_dir: str | None, secret: str
) -> None:
    base = key(
        Job(command="x", env={"TOKEN": SecretStr("s")}),
        LocalConfig(env_vars={"PASSWORD": SecretStr("s")}),
    )
    other = key(
        Job(
            name=name,
            command="x",
            env={"TOKEN": SecretStr(secret)},
            resources=Resources(walltime=walltime),
        ),
        LocalConfig(
            timeout=timeout,
            cancel_grace=grace,
            runs_dir=None if runs_dir is None else Path(runs_dir),
            env_vars={"PASSWORD": SecretStr(secret)},
        ),
    )
    assert other == base


KEYS_IN_A_FRESH_PROCESS = """
import json, sys
from pydantic import SecretStr
from tether import Job, LocalConfig
from tether.cache import default_key

def build(spec):
    env = {**spec["env"], **{k: SecretStr(v) for k, v in spec["secrets"].items()}}
    return Job.model_validate({**spec["job"], "env": env})

specs = json.loads(sys.argv[1])
keys = [
    default_key(build(s), LocalConfig.model_validate(s["config"]).cache_fields(), s["version"])
    for s in specs
]
print(json.dumps({"keys": keys}))
"""

NAMES = st.from_regex(r"[A-Z][A-Z0-9_]{0,5}", fullmatch=True)
TEXTS = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=10)


def _valid_glob(glob: str) -> bool:
    """Globs a Job accepts (relative, inside the run folder): the rest are refused up front."""
    try:
        Job(name="a", outputs=[glob])
    except ValueError:
        return False
    return True


SPECS = st.fixed_dictionaries(
    {
        "job": st.fixed_dictionaries(
            {
                "name": st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True),
                "command": st.one_of(
                    st.none(), TEXTS.filter(str.strip), st.lists(TEXTS, min_size=1, max_size=3)
                ),
                "workdir": st.none() | st.sampled_from(["/tmp/a", "/srv/data"]),
                "outputs": st.lists(TEXTS.filter(bool).filter(_valid_glob), max_size=3),
                "resources": st.fixed_dictionaries(
                    {
                        "cpus": st.none() | st.integers(1, 64),
                        "memory": st.none() | st.sampled_from(["512m", "2g", "1024"]),
                        "walltime": st.none() | st.floats(1, 1e5),
                        "extras": st.dictionaries(NAMES, st.integers() | TEXTS, max_size=3),
                    }
                ),
            }
        ),
        "env": st.dictionaries(NAMES, st.tuples(st.booleans(), TEXTS), max_size=4),
        "inputs": st.lists(st.binary(max_size=64), max_size=3),
        "config": st.fixed_dictionaries(
            {
                "shell": st.booleans(),
                "command": st.none() | TEXTS.filter(str.strip),
                "timeout": st.integers(60, 86400),
                "env_vars": st.dictionaries(NAMES, TEXTS, max_size=2),
            }
        ),
        "version": TEXTS,
    }
)


def _job_in_reverse_order(spec: dict[str, Any]) -> Job:
    """The spec's job with every mapping built in reverse order (an equal job)."""
    env: dict[str, str | SecretStr] = {k: v for k, v in reversed(spec["env"].items())}
    env.update({k: SecretStr(v) for k, v in reversed(spec["secrets"].items())})
    resources = dict(spec["job"]["resources"])
    resources["extras"] = dict(reversed(resources["extras"].items()))
    return Job.model_validate({**spec["job"], "env": env, "resources": resources})


@settings(max_examples=8, deadline=None)
@given(drawn=st.lists(SPECS, min_size=1, max_size=4))
def test_equal_jobs_give_equal_keys_across_processes_and_hash_seeds(
    drawn: list[dict[str, Any]],
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        specs = []
        for index, spec in enumerate(drawn):
            paths = []
            for number, content in enumerate(spec.pop("inputs")):
                path = Path(folder) / str(index) / f"in{number}.dat"
                path.parent.mkdir(exist_ok=True)
                path.write_bytes(content)
                paths.append(str(path))
            env = spec.pop("env")
            spec["job"]["inputs"] = paths
            spec["env"] = {k: v for k, (secret, v) in env.items() if not secret}
            spec["secrets"] = {k: v for k, (secret, v) in env.items() if secret}
            specs.append(spec)
        here = [
            key(_job_in_reverse_order(s), LocalConfig.model_validate(s["config"]), s["version"])
            for s in specs
        ]
        for seed in ("0", "2718281828"):
            with pytest.MonkeyPatch.context() as patch:
                patch.setenv("PYTHONHASHSEED", seed)
                seen = run_python(KEYS_IN_A_FRESH_PROCESS, json.dumps(specs))
            assert seen["keys"] == here, f"PYTHONHASHSEED={seed}"


# -- the key on a backend, and replacing it --------------------------------------------


async def test_backend_key_is_the_default_key_of_its_inner_fields(job: Job, tmp_path: Path) -> None:
    inner = LocalConfig(runs_dir=tmp_path / "runs", shell=False)
    backend = CachedBackend(inner.create(), SQLiteStore(tmp_path / "c.sqlite"), cache_version="v3")
    assert await backend.key(job) == default_key(job, inner.cache_fields(), "v3")
    assert await backend.key(job) != default_key(job, inner.cache_fields(), "")


async def test_key_function_is_replaceable(tmp_path: Path) -> None:
    calls: list[tuple[dict[str, Any], str]] = []

    def by_name(job: Job, fields: dict[str, Any], cache_version: str) -> str:
        calls.append((fields, cache_version))
        return f"{cache_version}-{job.name}"

    inner = LocalConfig(runs_dir=tmp_path / "runs")
    store = SQLiteStore(tmp_path / "c.sqlite")
    backend = CachedBackend(inner.create(), store, cache_version="v1", key=by_name)
    first = await backend.submit(Job(name="sim", command="echo one"))
    await first.wait()
    second = await backend.submit(Job(name="sim", command="echo two"))
    assert first.key == second.key == "v1-sim"
    assert second.hit
    assert await (await second.wait()).read_stdout() == "one\n"
    assert calls[0] == (inner.cache_fields(), "v1")


# -- secrets ------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "directory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> CacheStore:
    """Each store kind; everything it writes is under tmp_path/cache."""
    if request.param == "sqlite":
        return SQLiteStore(tmp_path / "cache" / "cache.sqlite")
    return DirectoryStore(tmp_path / "cache")


def files_holding(folder: Path, text: str) -> list[Path]:
    """Files under ``folder`` whose bytes contain ``text`` (SQLite's WAL and free pages too)."""
    needle = text.encode()
    return [p for p in folder.rglob("*") if p.is_file() and needle in p.read_bytes()]


async def test_secret_values_never_reach_the_store(tmp_path: Path, store: CacheStore) -> None:
    job_secret, config_secret = "job-secret-4f9a1c", "config-secret-77d2e0"
    inner = LocalConfig(runs_dir=tmp_path / "runs", env_vars={"PASSWORD": SecretStr(config_secret)})
    backend = CachedBackend(inner.create(), store)
    job = Job(
        command="sleep 0.3; [ ${#TOKEN} = 17 ] && [ ${#PASSWORD} = 20 ] && echo both-set",
        env={"TOKEN": SecretStr(job_secret)},
    )
    handle = await backend.submit(job)
    assert store.claims() == 1  # the in-flight claim holds the run's record
    assert files_holding(tmp_path / "cache", job_secret) == []
    assert files_holding(tmp_path / "cache", config_secret) == []
    result = await handle.wait()
    assert await result.read_stdout() == "both-set\n"  # the secrets did reach the run
    hit = await backend.submit(job)
    assert hit.hit
    for secret in (job_secret, config_secret):
        assert files_holding(tmp_path / "cache", secret) == []
        assert secret not in json.dumps([e.to_json() for e in store.entries()])
        assert secret not in json.dumps(hit.to_record())


async def test_secret_names_are_part_of_the_key(tmp_path: Path) -> None:
    backend = CachedBackend(
        LocalConfig(runs_dir=tmp_path / "runs").create(), SQLiteStore(tmp_path / "c.sqlite")
    )
    with_token = await backend.submit(Job(command="echo run", env={"TOKEN": SecretStr("s")}))
    await with_token.wait()
    with_other = await backend.submit(Job(command="echo run", env={"OTHER": SecretStr("s")}))
    same_name = await backend.submit(Job(command="echo run", env={"TOKEN": SecretStr("new")}))
    assert not with_other.hit and with_other.key != with_token.key
    assert same_name.hit and same_name.key == with_token.key
    await with_other.wait()


def test_interpolated_secret_of_a_cached_config_stays_out_of_keys_and_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "cached.yaml"
    path.write_text(
        "type: cached\n"
        "backend:\n"
        "  type: dummy\n"
        "  env_vars:\n"
        "    TOKEN: ${CACHE_TEST_TOKEN}\n"
        "store: directory\n"
        f"store_path: {tmp_path / 'cache'}\n"
    )
    monkeypatch.setenv("CACHE_TEST_TOKEN", "first-interpolated-secret")
    first = load_config(path)
    monkeypatch.setenv("CACHE_TEST_TOKEN", "second-interpolated-secret")
    second = load_config(path)
    assert "first-interpolated-secret" not in json.dumps(first.to_record())
    assert first.cache_fields() == second.cache_fields()


async def test_key_reads_inputs_off_the_event_loop(tmp_path: Path) -> None:
    """A large input is hashed in a worker thread: the loop keeps ticking meanwhile."""
    big = tmp_path / "big.dat"
    big.write_bytes(os.urandom(1 << 20) * 64)
    backend = CachedBackend(
        LocalConfig(runs_dir=tmp_path / "runs").create(), SQLiteStore(tmp_path / "c.sqlite")
    )
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await anyio.sleep(0.001)

    async with anyio.create_task_group() as group:
        group.start_soon(tick)
        computed = await backend.key(Job(command="x", inputs=[big]))
        group.cancel_scope.cancel()
    assert computed == key(Job(command="x", inputs=[big]))
    assert ticks > 1
