"""tether in a real Jupyter kernel: HTML reprs and live displays (issue 18).

One notebook runs on a fresh ipykernel through nbclient (``notebook_support``), with
top-level ``await`` as users write it; the tests assert on what each cell output.
The last tests check the other side: a plain script, and a terminal IPython, never
get a display.
"""

from __future__ import annotations

import json
import re
import textwrap
from typing import Any

import pytest

from .conftest import run_python
from .notebook_support import Cell, check_html, run_notebook

# One kernel start and a few local runs for the whole module, on a busy machine.
pytestmark = pytest.mark.timeout(600)

CELLS = {
    "setup": """
        import json, tether
        from tether._live import in_kernel
        print(json.dumps({"in_kernel": in_kernel()}))
    """,
    "handle": """
        backend = tether.LocalConfig().create()
        job = tether.Job(name="exits", command="echo out; echo oops >&2; exit 3")
        handle = await backend.submit(job)
        result = await handle.wait()
        print(handle.run_id)
        handle
    """,
    "result": """
        result
    """,
    "map": """
        def slow_square(x):
            import time
            time.sleep(0.4)
            return x * x

        values = await tether.map_calls(
            slow_square, range(4), backend=tether.LocalConfig(), max_concurrency=2
        )
        print(values)
    """,
    "failing": """
        def fails_on_one(x):
            import time
            if x == 1:
                raise ValueError("member one is bad")
            time.sleep(30 if x == 2 else 0)
            return x

        try:
            await tether.map_calls(
                fails_on_one, range(3), backend=tether.LocalConfig(), max_concurrency=3
            )
        except ValueError as exc:
            print("raised:", exc)
    """,
    "quiet": """
        print(await tether.map_calls(slow_square, range(3), progress=False))
    """,
    "ensemble": """
        def draw(seed, scale):
            import numpy as np
            return float(np.random.default_rng(seed).normal() * scale)

        ensemble = tether.Ensemble(draw, 3, seed=7, args=(2.0,))
        print(len(await ensemble.run(tether.InlineConfig())))
        ensemble
    """,
    "throttle": """
        import asyncio
        from tether._live import live_table

        with live_table("many", ["a"], progress=True) as table:
            for i in range(300):
                table.update("a", "RUNNING", detail=f"step {i}")
        burst = table.draws
        with live_table("timer", ["b"], progress=True) as table:
            table.update("b", "RUNNING")  # sooner than the interval: a timer draws it
            await asyncio.sleep(2)
            by_timer = table.draws
        print(json.dumps({"burst": burst, "by_timer": by_timer}))
    """,
    "wait_all": """
        local = tether.LocalConfig().create()
        runs = [
            await local.submit(tether.Job(name=f"nap{i}", command=f"sleep {0.3 * i}; exit {i}"))
            for i in range(3)
        ]
        done, pending = await tether.wait_all(runs, timeout=120)
        print(len(done), len(pending))
    """,
    "pipeline": """
        first = tether.Step("first", tether.Call(slow_square, 3))
        second = tether.Step("second", tether.Call(slow_square, first.value))
        report = await tether.Pipeline(
            [first, second], name="squares", backend=tether.InlineConfig()
        ).run()
        print(report.value("second"))
        report
    """,
}


@pytest.fixture(scope="module")
def notebook(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Cell]:
    """The notebook above, executed once on a fresh kernel; cells by name."""
    folder = tmp_path_factory.mktemp("notebook")
    cells = run_notebook([textwrap.dedent(src).strip() for src in CELLS.values()], folder)
    return dict(zip(CELLS, cells, strict=True))


def _one_html(cell: Cell) -> str:
    found = cell.html()
    assert len(found) == 1, f"expected one rich output, got {cell.outputs}"
    return found[0]


def _live_updates(cell: Cell) -> tuple[str, list[dict[str, Any]]]:
    """The cell's one live display: its id and every message sent for it."""
    displays = cell.displays()
    assert len(displays) == 1, f"expected one display with an id, got {list(displays)}"
    return next(iter(displays.items()))


def test_the_kernel_is_detected(notebook: dict[str, Cell]) -> None:
    assert json.loads(notebook["setup"].stdout()) == {"in_kernel": True}


def test_a_handle_shows_its_state_run_id_and_exit_code(notebook: dict[str, Cell]) -> None:
    cell = notebook["handle"]
    run_id = cell.stdout().strip()
    markup = _one_html(cell)
    parsed = check_html(markup)
    assert "LocalRunHandle" in parsed.text and run_id in parsed.text
    assert "FAILED" in parsed.text
    assert re.search(r"exit code\s*3", parsed.text)
    # The run folder is under the notebook's folder: the log links are relative to it.
    for name in ("stdout", "stderr"):
        assert f'href="tether-home/runs/{run_id}/{name}"' in markup
    # The plain-text form stays the one-line repr.
    plain = cell.outputs[-1]["data"]["text/plain"]
    assert plain == f"<LocalRunHandle run_id='{run_id}' state=FAILED>"


def test_a_result_shows_its_state_run_id_exit_code_and_error(notebook: dict[str, Cell]) -> None:
    run_id = notebook["handle"].stdout().strip()
    parsed = check_html(_one_html(notebook["result"]))
    assert "RunResult" in parsed.text and run_id in parsed.text and "FAILED" in parsed.text
    assert re.search(r"exit code\s*3", parsed.text)
    assert "oops" in parsed.text  # the error names the stderr tail
    for label in ("started", "ended", "duration", "run folder", "stdout", "stderr"):
        assert label in parsed.text


def test_map_calls_updates_one_display_until_all_are_done(notebook: dict[str, Cell]) -> None:
    cell = notebook["map"]
    assert cell.stdout().strip() == "[0, 1, 4, 9]"
    _, messages = _live_updates(cell)
    assert messages[0]["msg_type"] == "display_data"
    updates = [m for m in messages if m["msg_type"] == "update_display_data"]
    assert updates, "the live table was never updated"
    first = check_html(messages[0]["data"]["text/html"])
    assert "0/4 done" in first.text
    final = check_html(updates[-1]["data"]["text/html"])
    assert "4/4 done" in final.text and "(finished)" in final.text
    assert final.text.count("SUCCEEDED") >= 4
    assert "RUNNING" not in final.text and "PENDING" not in final.text
    assert "map slow_square" in final.text
    assert updates[-1]["data"]["text/plain"].startswith("map slow_square: 4/4 done")
    # The notebook keeps the final state in the display's one output.
    assert "4/4 done" in check_html(_one_html(cell)).text


def test_a_failure_shows_in_its_row_and_cancelled_runs_end_the_table(
    notebook: dict[str, Cell],
) -> None:
    cell = notebook["failing"]
    assert cell.stdout().strip() == "raised: member one is bad"
    _, messages = _live_updates(cell)
    final = check_html(messages[-1]["data"]["text/html"])
    assert "member one is bad" in final.text and "FAILED" in final.text
    assert "CANCELLED" in final.text  # the 30 s member, stopped by fail-fast
    assert "RUNNING" not in final.text


def test_wait_all_shows_the_runs_until_they_end(notebook: dict[str, Cell]) -> None:
    cell = notebook["wait_all"]
    assert cell.stdout().strip() == "3 0"
    _, messages = _live_updates(cell)
    first = check_html(messages[0]["data"]["text/html"])
    assert "waiting" in first.text and "3/3 done" not in first.text
    final = check_html(messages[-1]["data"]["text/html"])
    assert "3/3 done" in final.text and "SUCCEEDED 1 FAILED 2" in final.text
    assert all(f"exit code {i}" in final.text for i in range(3))
    assert "RUNNING" not in final.text


def test_progress_false_shows_nothing(notebook: dict[str, Cell]) -> None:
    cell = notebook["quiet"]
    assert cell.stdout().strip() == "[0, 1, 4]"
    assert cell.displays() == {} and cell.html() == []


def test_an_ensemble_has_a_live_table_and_a_repr(notebook: dict[str, Cell]) -> None:
    cell = notebook["ensemble"]
    assert cell.stdout().strip() == "3"
    _, messages = _live_updates(cell)
    final = check_html(messages[-1]["data"]["text/html"])
    assert "3/3 done" in final.text and "member" in final.text
    repr_html = check_html(cell.html()[-1])
    assert "Ensemble" in repr_html.text and "draw" in repr_html.text and "7" in repr_html.text


def test_updates_are_throttled_and_a_late_one_is_drawn_by_a_timer(
    notebook: dict[str, Cell],
) -> None:
    cell = notebook["throttle"]
    counts = json.loads(cell.stdout())
    # 300 updates in a burst: the first display, at most a few redraws, the final one.
    assert 2 <= counts["burst"] <= 20
    # The first display, then the timer's redraw (no further update came).
    assert counts["by_timer"] == 2
    displays = cell.displays()
    assert len(displays) == 2
    burst, timer = displays.values()
    assert "step 299" in burst[-1]["data"]["text/html"]  # the final draw has the last update
    assert [m["msg_type"] for m in timer] == ["display_data", *["update_display_data"] * 2]
    assert "RUNNING" in timer[1]["data"]["text/html"]


def test_a_pipeline_has_a_live_table_of_its_steps_and_a_report(
    notebook: dict[str, Cell],
) -> None:
    cell = notebook["pipeline"]
    assert cell.stdout().strip() == "81"
    _, messages = _live_updates(cell)
    final = check_html(messages[-1]["data"]["text/html"])
    assert "pipeline 'squares'" in final.text and "2/2 done" in final.text
    assert "first" in final.text and "second" in final.text
    assert "RUNNING" not in final.text
    report = check_html(cell.html()[-1])
    assert "Pipeline" in report.text and "squares" in report.text
    assert "completed successfully" in report.text
    assert report.text.count("1/1 succeeded") == 2
    plain = cell.outputs[-1]["data"]["text/plain"]
    assert (
        plain == "<PipelineResult 'squares' success=True steps: first=SUCCEEDED, second=SUCCEEDED>"
    )


# -- outside a kernel: nothing is displayed ------------------------------------------

_SCRIPT = """
import asyncio, json, sys
import tether
from tether._live import in_kernel, live_table

def square(x):
    return x * x

async def main():
    values = await tether.map_calls(square, range(3))
    ensemble = await tether.Ensemble(square, 2, seed=1, seed_as="int").run()
    step = tether.Step("only", tether.Call(square, 4))
    report = await tether.Pipeline([step], backend=tether.InlineConfig()).run(progress=True)
    with live_table("by hand", ["a"], progress=True) as table:
        table.update("a", tether.RunState.SUCCEEDED)
    return values, len(ensemble), report.value("only"), table.draws

values, members, only, draws = asyncio.run(main())
print(json.dumps({
    "values": values, "members": members, "only": only, "draws": draws,
    "in_kernel": in_kernel(), "ipython_imported": "IPython" in sys.modules,
}))
"""


def test_a_plain_script_displays_nothing_and_never_imports_ipython() -> None:
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, f"the script printed more than its result: {proc.stdout!r}"
    assert json.loads(lines[0]) == {
        "values": [0, 1, 4],
        "members": 2,
        "only": 16,
        "draws": 0,
        "in_kernel": False,
        "ipython_imported": False,
    }


def test_a_terminal_ipython_is_not_a_kernel() -> None:
    out = run_python(
        """
import asyncio, json
from IPython.terminal.interactiveshell import TerminalInteractiveShell
import tether
from tether._live import in_kernel

shell = TerminalInteractiveShell.instance()
values = asyncio.run(tether.map_calls(abs, [-1, -2]))
print(json.dumps({"in_kernel": in_kernel(), "values": values}))
"""
    )
    assert out == {"in_kernel": False, "values": [1, 2]}
