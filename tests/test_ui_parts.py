"""The dashboard's parts without a browser: the DAG layout, the guard's rules, the
masking of credentials, the readers' tolerance of records that come and go, and
that ``import tether`` and the CLI's start do not load the dashboard."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="the ui extra is not installed: pip install -e '.[dev]'")

from tether.ui._dag import dag_svg, layers
from tether.ui._render import MASK, _masked
from tether.ui._security import Guard
from tether.ui._sources import (
    Pipelines,
    PipelineView,
    Runs,
    StepView,
    pipeline_running,
    safe_run_id,
)


def _steps(edges: dict[str, tuple[str, ...]]) -> dict[str, StepView]:
    return {name: StepView(name, upstream=ups) for name, ups in edges.items()}


def test_steps_are_laid_out_in_columns_after_what_they_wait_for() -> None:
    steps = _steps({"a": (), "b": ("a",), "c": ("a",), "d": ("b", "c"), "e": ()})
    assert layers(steps) == [["a", "e"], ["b", "c"], ["d"]]


def test_a_cycle_or_an_unknown_step_is_drawn_not_a_hang() -> None:
    steps = _steps({"a": ("b",), "b": ("a",), "c": ("nowhere",)})
    columns = layers(steps)
    assert sorted(name for column in columns for name in column) == ["a", "b", "c"]
    view = PipelineView(0, Path("p.state.jsonl"), "p", steps=steps)
    svg = dag_svg(view, lambda step: f"/s/{step}")
    assert svg.count('class="step"') == 3 and svg.count('class="edge"') == 2


def test_step_names_are_escaped_in_the_picture() -> None:
    view = PipelineView(0, Path("p"), "p", steps=_steps({"<script>": ()}))
    svg = dag_svg(view, lambda step: "/x")
    assert "<script>" not in svg and "&lt;script&gt;" in svg


def test_actions_need_the_token_and_no_foreign_origin() -> None:
    guard = Guard(8780, token="right")
    assert guard.action_refusal(token="right", origin=None, fetch_site=None) is None
    own = {"origin": "http://127.0.0.1:8780", "fetch_site": "same-origin"}
    assert guard.action_refusal(token="right", **own) is None
    assert "token" in str(guard.action_refusal(token="wrong", **own))
    assert "token" in str(guard.action_refusal(token=None, **own))
    foreign = guard.action_refusal(token="right", origin="http://evil.test", fetch_site=None)
    assert "another origin" in str(foreign)
    assert "another origin" in str(
        guard.action_refusal(token="right", origin="null", fetch_site=None)
    )
    other_port = guard.action_refusal(
        token="right", origin="http://127.0.0.1:9999", fetch_site=None
    )
    assert other_port is not None
    cross = guard.action_refusal(token="right", origin=None, fetch_site="cross-site")
    assert "another site" in str(cross)


def test_only_loopback_names_of_this_port_are_hosts() -> None:
    guard = Guard(8780)
    assert guard.host_ok("127.0.0.1:8780") and guard.host_ok("localhost:8780")
    for host in ("evil.test:8780", "127.0.0.1:8781", "0.0.0.0:8780", None, "127.0.0.1"):
        assert not guard.host_ok(host)
    assert Guard(1).token != Guard(1).token  # a new token each start


def test_run_ids_that_could_leave_the_runs_folder_are_refused() -> None:
    assert safe_run_id("sim-20260101-000000-0a1b2c3d")
    for bad in ("..", "../etc", "a/b", ".hidden", "", "x" * 201):
        assert not safe_run_id(bad)


def test_credential_looking_env_values_are_masked_at_every_level() -> None:
    record = {
        "env": {"API_KEY": "k", "COLOUR": "teal"},
        "backend": {"env_vars": {"DB_PASSWORD": "p"}, "backend": {"env_vars": {"TOKEN": "t"}}},
    }
    masked = _masked(record)
    assert masked["env"] == {"API_KEY": MASK, "COLOUR": "teal"}
    assert masked["backend"]["env_vars"] == {"DB_PASSWORD": MASK}
    assert masked["backend"]["backend"]["env_vars"] == {"TOKEN": MASK}
    assert record["env"]["API_KEY"] == "k"  # the record itself is left alone


@pytest.mark.asyncio
async def test_the_runs_reader_shrugs_off_folders_that_come_and_go(tmp_path: Path) -> None:
    runs_dir = tmp_path / "runs"
    runs = Runs([runs_dir, tmp_path / "not-there"], interval=0)
    assert await runs.snapshot() == []  # no runs folder yet: no runs, no error
    (runs_dir / "creating").mkdir(parents=True)  # a run folder without its handle yet
    (runs_dir / "torn").mkdir()
    (runs_dir / "torn" / "handle.json").write_text('{"format": "tether.handle", "ver')
    rows = await runs.snapshot()
    assert [row.run_id for row in rows] == ["torn"]
    assert rows[0].state == "UNREADABLE" and rows[0].error
    (runs_dir / "torn" / "handle.json").unlink()
    assert await runs.snapshot() == []
    assert runs.record_of("../runs/torn") is None


@pytest.mark.asyncio
async def test_a_pipeline_is_shown_before_its_state_file_exists_and_when_it_is_not_one(
    tmp_path: Path,
) -> None:
    spec = {
        "name": "later",
        "backend": {"type": "local"},
        "steps": [
            {"name": "a", "job": {"command": "true"}},
            {"name": "b", "depends_on": ["a"], "job": {"command": "true"}},
        ],
    }
    (tmp_path / "later.yml").write_text(json.dumps(spec))
    state = tmp_path / "later.state.jsonl"
    pipelines = Pipelines([state])
    view = await pipelines.view(0)
    assert view.name == "later" and view.has_edges
    assert {name: step.state for name, step in view.steps.items()} == {
        "a": "PENDING",
        "b": "PENDING",
    }
    assert view.steps["b"].upstream == ("a",)
    state.write_text("not a journal\n")
    broken = await pipelines.view(0)
    assert broken.state == "UNREADABLE" and "not a tether pipeline state file" in str(broken.error)


def test_a_pipeline_runs_while_its_state_file_is_locked_and_looking_takes_no_lock(
    tmp_path: Path,
) -> None:
    state = tmp_path / "p.state.jsonl"
    assert not pipeline_running(state)
    state.write_text("")
    fd = os.open(state, os.O_RDWR)
    try:
        assert not pipeline_running(state)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert pipeline_running(state)
    finally:
        os.close(fd)
    assert not pipeline_running(state)
    # Looking never holds the lock, so a pipeline starting meanwhile gets it.
    fd = os.open(state, os.O_RDWR)
    try:
        for _ in range(200):
            pipeline_running(state)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def test_import_tether_and_the_cli_parser_do_not_load_the_dashboard() -> None:
    code = (
        "import sys, tether\n"
        "from tether.cli._parser import build_parser\n"
        "build_parser().parse_args(['ui', '--port', '0'])\n"
        "loaded = [m for m in sys.modules if m.split('.')[0] in ('starlette', 'uvicorn')"
        " or m.startswith('tether.ui')]\n"
        "print(loaded)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert proc.stdout.strip() == "[]"
