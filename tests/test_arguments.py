"""Wrong argument types fail at the door with the argument, what was given and what is
accepted (rompy's own tests pass None, objects and bad strings)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import tether
from tether import ArgumentTypeError, Job, Pipeline, RunState, Step, UnknownBackendError

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("job", [None, object(), "echo hi", {"command": "true"}])
def test_run_sync_refuses_what_is_not_a_job(job: Any) -> None:
    with pytest.raises(ArgumentTypeError, match=r"run_sync\(\): job must be a tether.Job"):
        tether.run_sync(job)


def test_an_argument_type_error_is_a_type_error() -> None:
    with pytest.raises(TypeError, match=f"not {type(None).__name__}"):
        tether.run_sync(None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("backend", "error", "message"),
    [
        ("invalid_string", UnknownBackendError, "backend 'invalid_string': Unknown backend type"),
        (123, ArgumentTypeError, "backend must be a Backend, a backend config or a backend type"),
        (object(), ArgumentTypeError, "not object"),
    ],
)
def test_run_sync_refuses_a_backend_that_is_none(backend: Any, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        tether.run_sync(Job(command="true"), backend=backend)


def test_run_sync_takes_a_backend_type_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert tether.run_sync(Job(command="true"), backend="local").state is RunState.SUCCEEDED


async def test_pipeline_function_refuses_bad_arguments() -> None:
    with pytest.raises(ArgumentTypeError, match=r"pipeline\(\): job must be"):
        await tether.pipeline(None)  # type: ignore[arg-type]
    with pytest.raises(UnknownBackendError, match=r"run_backend 'invalid': Unknown backend") as e:
        await tether.pipeline(Job(command="true"), run_backend="invalid")
    assert "run_kwargs" not in str(e.value)  # never blames what was not passed
    with pytest.raises(ArgumentTypeError, match="run_backend must be a Backend"):
        await tether.pipeline(Job(command="true"), run_backend=3)  # type: ignore[arg-type]


async def test_pipeline_level_backend_type_name_runs(tmp_path: Path) -> None:
    """``Pipeline(..., backend="local")`` runs, as a step-level name always did."""
    job = Job(command="echo hi", workdir=tmp_path)
    result = await Pipeline([Step("a", job)], backend="local").run()
    assert result["success"] is True
    with pytest.raises(ArgumentTypeError, match="pipeline 'p': backend must be"):
        Pipeline([Step("a", job)], name="p", backend=5)  # type: ignore[arg-type]
