"""The example notebook, examples/notebook/tour.ipynb, run on a real Jupyter kernel (issue 18).

The notebook runs as a reader runs it: cell by cell on a fresh ipykernel (through
nbclient, ``notebook_support.run_notebook_file``), in a temporary copy of its
folder with ``TETHER_HOME`` in that copy, and with the kernel restarted where
its markdown says "Restart the kernel here". The tests assert on what the cells
output: the handle's HTML, the re-attached result on the new kernel, the
ensemble's values against the same ensemble run here, the live table's
updates, the state changes watched, the resumed pipeline, and the sync facade.
"""

from __future__ import annotations

import ast
import importlib
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest

import tether

from .notebook_support import RESTART_TAG, Cell, check_html, run_notebook_file

# One kernel start, one restart, and about twenty local runs, on a busy machine.
pytestmark = pytest.mark.timeout(600)

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "notebook"
NOTEBOOK = EXAMPLE / "tour.ipynb"
#: What running the notebook leaves behind, should a reader have run it in the repo.
_LEFTOVERS = ("runs", "__pycache__", ".ipynb_checkpoints", "*.json", "*.state.jsonl")


def _tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A temporary copy of the example's folder, where the notebook runs."""
    copy = tmp_path_factory.mktemp("tour") / "notebook"
    shutil.copytree(EXAMPLE, copy, ignore=shutil.ignore_patterns(*_LEFTOVERS))
    return copy


@pytest.fixture(scope="module")
def cells(folder: Path) -> dict[str, Cell]:
    """The notebook, executed once; its code cells by their tag (each has one)."""
    before = _tree(EXAMPLE)
    executed = run_notebook_file(folder / NOTEBOOK.name, folder)
    assert _tree(EXAMPLE) == before, "running the notebook wrote into the repository"
    by_tag = {cell.tags[0]: cell for cell in executed}
    assert len(by_tag) == len(executed), "every code cell has a tag of its own"
    return by_tag


@pytest.fixture(scope="module")
def tour_model(folder: Path) -> Iterator[Any]:
    """The notebook's model module, imported here from the copy (as the kernel does)."""
    sys.path.insert(0, str(folder))
    try:
        yield importlib.import_module("tour_model")
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop("tour_model", None)


def _one_html(cell: Cell) -> str:
    found = cell.html()
    assert len(found) == 1, f"expected one rich output, got {cell.outputs}"
    return found[0]


def _plain(cell: Cell) -> str:
    """The cell's result (its last expression) as plain text."""
    results = [o for o in cell.outputs if o.get("output_type") == "execute_result"]
    assert len(results) == 1, f"expected one result, got {cell.outputs}"
    return str(results[0]["data"]["text/plain"])


def _kernel_pid_printed(cell: Cell) -> int:
    found = re.search(r"^kernel process (\d+)$", cell.stdout(), re.MULTILINE)
    assert found, cell.stdout()
    return int(found.group(1))


def test_the_notebook_file_is_clean_nbformat_4() -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    assert notebook.nbformat == 4
    assert notebook.metadata["kernelspec"]["name"] == "python3"
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)
    # A reader's notebook: prose between the code cells, and the restart spelled out.
    kinds = "".join("c" if c.cell_type == "code" else "m" for c in notebook.cells)
    assert kinds.startswith("m") and "ccc" not in kinds, kinds
    restart = [c for c in notebook.cells if RESTART_TAG in c.metadata.get("tags", [])]
    assert len(restart) == 1 and restart[0].cell_type == "markdown"
    assert "Restart the kernel here" in restart[0].source


def test_no_cell_raised_and_nothing_went_wrong_on_stderr(cells: dict[str, Cell]) -> None:
    for tag, cell in cells.items():
        assert cell.errors() == [], f"cell {tag!r} raised: {cell.errors()}"
        assert not [m for m in cell.messages if m["msg_type"] == "error"], tag
        assert "Traceback" not in cell.stderr(), f"cell {tag!r}:\n{cell.stderr()}"


def test_the_handle_shows_its_run_id_and_state(cells: dict[str, Cell], folder: Path) -> None:
    cell = cells["submit"]
    run_id = cell.stdout().strip()
    assert run_id.startswith("greet-")
    plain = _plain(cell)
    found = re.fullmatch(rf"<LocalRunHandle run_id='{re.escape(run_id)}' state=(\w+)>", plain)
    assert found, plain
    state = found.group(1)
    assert state in ("RUNNING", "SUCCEEDED")  # a local run is running when submit returns
    parsed = check_html(_one_html(cell))
    assert "LocalRunHandle" in parsed.text and run_id in parsed.text and state in parsed.text
    # The saved handle is in the notebook's folder: the one the next kernel loads.
    assert run_id in (folder / "greet.json").read_text()


def test_the_run_is_reattached_on_a_new_kernel(cells: dict[str, Cell]) -> None:
    before, after = cells["setup"], cells["reattach"]
    assert before.kernel_pid is not None and after.kernel_pid is not None
    assert after.kernel_pid != before.kernel_pid, "the kernel was not restarted"
    # What the cells print is the pid of the kernel that ran them.
    assert _kernel_pid_printed(before) == before.kernel_pid
    assert _kernel_pid_printed(after) == after.kernel_pid
    order = list(cells)
    restarted = order.index("reattach")
    assert {cells[t].kernel_pid for t in order[:restarted]} == {before.kernel_pid}
    assert {cells[t].kernel_pid for t in order[restarted:]} == {after.kernel_pid}

    run_id = cells["submit"].stdout().strip()
    lines = after.stdout().splitlines()
    assert lines[1:] == ["SUCCEEDED exit code 0", "hello from tether", "the answer is 42"]
    parsed = check_html(_one_html(after))
    assert "RunResult" in parsed.text and run_id in parsed.text and "SUCCEEDED" in parsed.text
    assert re.search(r"exit code\s*0", parsed.text)


def test_the_ensemble_values_are_those_of_the_same_ensemble_here(
    cells: dict[str, Cell], tour_model: Any
) -> None:
    cell = cells["ensemble"]
    values = ast.literal_eval(cell.stdout().strip())
    # The same ensemble on another backend (threads of this process): bit-identical.
    ensemble = tether.Ensemble(tour_model.peak, 8, seed=2024, args=(1.5,), kwargs={"pause": 0.3})
    here = ensemble.run_sync(tether.InlineConfig(mode="threads", n_jobs=8), progress=False)
    assert len(values) == 8
    # repr() of a float round-trips exactly, so equal values are equal bits.
    assert [v.hex() for v in values] == [v.hex() for v in here]
    assert len(set(values)) == 8  # each member had a seed of its own
    parsed = check_html(cell.html()[-1])
    assert "Ensemble" in parsed.text and "peak" in parsed.text and "2024" in parsed.text
    assert _plain(cell) == "Ensemble(peak, n=8, seed=2024)"


def _done(markup: str) -> int:
    """How many members a drawing of the live table counts as done."""
    found = re.search(r"(\d+)/8 done", check_html(markup).text)
    assert found, markup
    return int(found.group(1))


def test_the_live_table_updates_until_every_member_is_done(cells: dict[str, Cell]) -> None:
    displays = cells["ensemble"].displays()
    assert len(displays) == 1, f"expected one live display, got {list(displays)}"
    (messages,) = displays.values()
    assert messages[0]["msg_type"] == "display_data"
    assert "0/8 done" in check_html(messages[0]["data"]["text/html"]).text
    updates = [m for m in messages if m["msg_type"] == "update_display_data"]
    assert updates, "the live table was never updated"
    counts = [_done(m["data"]["text/html"]) for m in messages]
    assert counts == sorted(counts) and counts[-1] == 8
    final = check_html(updates[-1]["data"]["text/html"]).text
    assert "8/8 done" in final and "(finished)" in final
    assert final.count("SUCCEEDED") >= 8
    assert "RUNNING" not in final and "PENDING" not in final
    assert updates[-1]["data"]["text/plain"].startswith("ensemble of 8 (seed 2024): 8/8 done")


def test_watch_printed_each_runs_terminal_change(cells: dict[str, Cell]) -> None:
    lines = cells["watch"].stdout().splitlines()
    changes = [re.fullmatch(r"(nap-(\d)-\S+): (\w+) -> (\w+)", line) for line in lines]
    assert all(changes), lines
    ends = [m for m in changes if m and m.group(4) == "SUCCEEDED"]
    # Exactly one terminal change per run, each run by its own id.
    assert sorted(m.group(2) for m in ends) == ["0", "1", "2"], lines
    assert len({m.group(1) for m in ends}) == 3
    # The runs end in the order of their sleeps (0.2, 0.6, 1.2 s).
    assert [m.group(2) for m in ends] == ["1", "2", "0"], lines


def test_as_completed_gave_the_results_in_the_order_the_runs_ended(
    cells: dict[str, Cell],
) -> None:
    lines = cells["as-completed"].stdout().splitlines()
    found = [re.fullmatch(r"count-(\d)-\S+ SUCCEEDED (\d)", line) for line in lines]
    assert all(found) and len(found) == 3, lines
    assert [(m.group(1), m.group(2)) for m in found if m] == [("1", "1"), ("2", "2"), ("3", "3")]


def test_the_pipeline_reports_its_steps_and_resumes_them(
    cells: dict[str, Cell], tour_model: Any, folder: Path
) -> None:
    first, again = cells["pipeline"], cells["resume"]
    message, summary = first.stdout().splitlines()
    assert message == "Pipeline 'tour' completed successfully"
    members = tether.Ensemble(tour_model.peak, 4, seed=7, args=(1.0,)).run_sync(progress=False)
    assert ast.literal_eval(summary) == tour_model.summarise(members)
    report = check_html(first.html()[-1])  # after the live table's final state
    assert "Pipeline" in report.text and "tour" in report.text
    assert "simulate" in report.text and "summary" in report.text
    assert "(resumed)" not in report.text
    assert (folder / "tour.state.jsonl").is_file()

    # The second run skipped both steps: resumed from the state file, same values.
    # (its runs "recorded": they come from the journal, none was submitted again)
    assert again.stdout().splitlines() == [
        "simulate resumed " + str(["recorded"] * 4),
        "summary resumed ['recorded']",
        "True",
    ]
    resumed = check_html(again.html()[-1])
    assert resumed.text.count("(resumed)") == 2
    assert _plain(again).startswith("<PipelineResult 'tour' success=True")


def test_the_sync_facade_ran_without_await(cells: dict[str, Cell]) -> None:
    assert cells["sync"].stdout().splitlines() == ["SUCCEEDED", "['no await needed']"]
