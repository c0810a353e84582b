"""Fuzzed handle records: any file gives a loaded handle or a tether error, nothing else."""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tether
from tether.backends.dummy import DummyConfig
from tether.errors import TetherError
from tether.records import read_record
from tether.registry import backend_configs, handle_from_record
from tether.result import utc_time

pytestmark = pytest.mark.filterwarnings("error")

#: Any JSON value: what a hostile or damaged handle file may hold anywhere.
JSON: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()  # NaN and Infinity too: Python writes and reads them
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)

FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def folder() -> Iterator[Path]:
    """A folder shared by every example of a module (hypothesis reruns one test many times)."""
    with tempfile.TemporaryDirectory() as name:
        yield Path(name)


async def _saved_record(folder: Path) -> dict[str, Any]:
    config = DummyConfig(runs_dir=folder / "runs", stdout="hi\n", outputs={"o.txt": "1\n"})
    handle = await config.create().submit(tether.Job(name="fuzz", command=["true"]))
    await handle.wait()
    path = await handle.save(folder / "real.json")
    record: dict[str, Any] = json.loads(path.read_text())
    return record


@pytest.fixture(scope="module")
def real_record(folder: Path) -> dict[str, Any]:
    """The record of a finished dummy run, saved by tether itself."""
    return anyio.run(_saved_record, folder)


def _paths(value: Any, prefix: tuple[str | int, ...] = ()) -> Iterator[tuple[str | int, ...]]:
    """Every place in a JSON value (the root excluded)."""
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return
    for key, child in items:
        yield (*prefix, key)
        yield from _paths(child, (*prefix, key))


def _replace(value: Any, path: tuple[str | int, ...], new: Any, *, delete: bool) -> Any:
    """A copy of ``value`` with the item at ``path`` replaced by ``new`` (or removed)."""
    copy = json.loads(json.dumps(value))
    parent = copy
    for key in path[:-1]:
        parent = parent[key]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = new
    return copy


def _load(path: Path) -> None:
    """Load ``path`` every way tether does; only a handle or a TetherError may come out."""
    try:
        handle = anyio.run(tether.load_handle, path)
    except TetherError:
        pass
    else:
        assert isinstance(handle, tether.RunHandle)
    try:
        record = read_record(path)
    except TetherError:
        return
    with contextlib.suppress(TetherError):
        handle_from_record(record, source=path)


@FUZZ
@given(value=JSON)
def test_any_json_value_loads_or_is_a_tether_error(folder: Path, value: Any) -> None:
    path = folder / "any.json"
    path.write_text(json.dumps(value))
    _load(path)


@FUZZ
@given(data=st.data(), new=JSON, delete=st.booleans())
def test_mutated_real_record_loads_or_is_a_tether_error(
    folder: Path, real_record: dict[str, Any], data: st.DataObject, new: Any, delete: bool
) -> None:
    place = data.draw(st.sampled_from(sorted(_paths(real_record), key=repr)), label="place")
    mutated = _replace(real_record, place, new, delete=delete)
    path = folder / "mutated.json"
    path.write_text(json.dumps(mutated))
    _load(path)


BACKENDS = sorted(backend_configs())


@FUZZ
@given(
    backend=st.sampled_from(BACKENDS),
    parts=st.fixed_dictionaries({}, optional={k: JSON for k in ("job", "config", "data")}),
)
def test_any_backend_with_parts_of_any_shape_loads_or_is_a_tether_error(
    folder: Path, real_record: dict[str, Any], backend: str, parts: dict[str, Any]
) -> None:
    record = {**real_record, "backend": backend, **parts}
    record["config"] = (
        {**record["config"], "type": backend}
        if isinstance(record["config"], dict)
        else record["config"]
    )
    path = folder / "parts.json"
    path.write_text(json.dumps(record))
    _load(path)


@pytest.mark.parametrize("seconds", [1e300, -1e300, float("nan"), float("inf"), 10**20])
def test_a_time_no_datetime_can_hold_is_no_time(seconds: float) -> None:
    assert utc_time(seconds) is None
    assert utc_time(0.0) is not None
