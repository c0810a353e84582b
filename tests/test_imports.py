"""``import tether`` and ``tether --help`` load nearly nothing; every public name still works.

The public names are imported on first use (``tether/__init__.py``, PEP 562) and the
CLI imports a command's code only when it runs. These tests check what fresh
processes load (``sys.modules``), not how long they take: timing is the benchmark's
job (``bench/startup_bench.py``).
"""

from __future__ import annotations

import ast
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

import tether
from tether import DummyConfig, Job, LocalConfig, RunResult, RunState

from .conftest import run_python

#: Nothing that ``import tether`` or ``tether --help`` may load: the models'
#: validation library, parsers, engines' clients, stores and heavy extras.
HEAVY = (
    "pydantic",
    "pydantic_core",
    "yaml",
    "anyio",
    "asyncio",
    "rich",
    "aiodocker",
    "aiofiles",
    "sqlite3",
    "dask",
    "distributed",
    "numpy",
    "cloudpickle",
    "jsonschema",
    "importlib.metadata",
)

_LOADED = (
    "import json, sys\n"
    "heavy = {heavy!r}\n"
    "print(json.dumps({{\n"
    "    'heavy': sorted(m for m in heavy if m in sys.modules),\n"
    "    'tether': sorted(m for m in sys.modules if m.split('.')[0] == 'tether'),\n"
    "}}))\n"
)


def test_import_tether_loads_no_backend_model_or_parser() -> None:
    seen = run_python("import tether\n" + _LOADED.format(heavy=HEAVY))
    assert seen["heavy"] == []
    assert seen["tether"] == ["tether", "tether._version"]


def test_help_builds_the_parser_without_the_library() -> None:
    code = (
        "import contextlib, io\n"
        "from tether.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "    try:\n"
        "        main(['--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "assert 'exit status:' in out.getvalue()\n"
    ) + _LOADED.format(heavy=HEAVY)
    seen = run_python(code)
    assert seen["heavy"] == []
    assert not [m for m in seen["tether"] if m.startswith(("tether.backends", "tether.registry"))]
    # Sub-commands' help too: `tether backends --help`, `tether ls --help`.
    for argv in (["backends", "--help"], ["ls", "--help"], ["pipeline", "run", "--help"]):
        proc = subprocess.run(
            [sys.executable, "-m", "tether", *argv], capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0 and "usage: tether" in proc.stdout, proc.stderr


def _type_checking_imports() -> dict[str, str]:
    """Name → module of the imports ``tether/__init__.py`` shows type checkers."""
    tree = ast.parse(Path(tether.__file__).read_text())
    found: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            for child in node.body:
                assert isinstance(child, ast.ImportFrom)
                for alias in child.names:
                    found[alias.asname or alias.name] = "." * child.level + (child.module or "")
    return found


def test_lazy_names_match_what_type_checkers_see() -> None:
    shown = _type_checking_imports()
    exports = tether._EXPORTS  # type: ignore[attr-defined]
    assert shown.pop("sync") == "."  # the submodule, `tether.sync`
    assert shown == exports
    assert set(exports) | {"__version__"} == set(tether.__all__)
    assert len(tether.__all__) == len(set(tether.__all__))


def test_every_public_name_imports_in_a_fresh_process() -> None:
    code = (
        "import json, tether\n"
        "listed = sorted(set(tether.__all__) - set(dir(tether)))\n"
        "found = {}\n"
        "for name in tether.__all__:\n"
        "    value = getattr(tether, name)\n"
        "    found[name] = getattr(value, '__module__', 'tether')\n"
        "exec('from tether import ' + ', '.join(tether.__all__))\n"
        "print(json.dumps({'not_in_dir': listed, 'modules': found}))\n"
    )
    seen = run_python(code)
    assert seen["not_in_dir"] == []
    assert set(seen["modules"]) == set(tether.__all__)
    assert all(module.startswith("tether") for module in seen["modules"].values())


def test_names_are_the_objects_of_their_modules() -> None:
    from tether.backends.local.config import LocalConfig as Defined
    from tether.errors import TetherError

    assert tether.LocalConfig is Defined and tether.TetherError is TetherError
    assert isinstance(LocalConfig(), tether.BackendConfig)
    assert tether.sync.SyncRunHandle is tether.SyncRunHandle
    assert tether.job.Job is Job  # submodules stay reachable as attributes
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        _ = tether.no_such_name  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        _ = tether.__no_such_dunder__  # type: ignore[attr-defined]


def test_configs_results_and_handles_still_pickle() -> None:
    config = LocalConfig(timeout=120, env_vars={"A": "1"})
    assert pickle.loads(pickle.dumps(config)) == config
    job = Job(name="p", command=["true"], resources={"cpus": 1})
    assert pickle.loads(pickle.dumps(job)) == job
    result = RunResult(run_id="r", state=RunState.SUCCEEDED, exit_code=0)
    assert pickle.loads(pickle.dumps(result)) == result
    handle = tether.DummyRunHandle(
        run_id="r1",
        job=job,
        config=DummyConfig(),
        run_dir=Path("/nonexistent"),
        submitted_at=0,
        timeout=60,
    )
    copy = pickle.loads(pickle.dumps(handle))
    assert type(copy) is tether.DummyRunHandle and copy.run_id == "r1" and copy.job == job


def test_a_registry_lookup_imports_only_that_backend() -> None:
    code = (
        "import json, sys\n"
        "from tether.registry import config_class\n"
        "config_class('dummy')\n"
        "print(json.dumps({'backends': sorted(m for m in sys.modules\n"
        "    if m.startswith('tether.backends.') and m.count('.') == 2)}))\n"
    )
    assert run_python(code)["backends"] == ["tether.backends.dummy"]
