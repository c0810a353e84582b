"""HTML renderings (``tether._html``): what they show, that they escape, that they parse.

Real runs on the dummy and local backends, real pipeline reports and a real SQLite
store; the notebook side (a real kernel) is in ``test_notebook.py``.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr

import tether
from tether import _html
from tether._live import LiveTable, in_kernel, live_table, wanted
from tether.pipelines.report import MemberReport, StepReport

from .notebook_support import check_html

pytestmark = pytest.mark.anyio

SCRIPT = "<script>alert(1)</script>"


def _no_raw_script(markup: str) -> None:
    assert "<script" not in markup.lower(), markup
    assert "&lt;script&gt;" in markup


# -- escaping ---------------------------------------------------------------------------


def test_a_result_escapes_run_id_error_traceback_paths_and_value(tmp_path: Path) -> None:
    folder = tmp_path / "<script>x"
    result = tether.RunResult(
        run_id=f"run-{SCRIPT}",
        state=tether.RunState.FAILED,
        exit_code=1,
        error=f"boom {SCRIPT}",
        traceback=f"Traceback: {SCRIPT}",
        run_dir=folder,
        stdout=folder / "stdout",
        outputs=[folder / f"{SCRIPT}.nc"],
        value=SCRIPT,
    )
    markup = result._repr_html_()
    _no_raw_script(markup)
    parsed = check_html(markup)
    # Escaped, not dropped: the reader sees the text as it is.
    assert f"run-{SCRIPT}" in parsed.text and f"boom {SCRIPT}" in parsed.text
    assert f"Traceback: {SCRIPT}" in parsed.text and repr(SCRIPT) in parsed.text


@pytest.mark.parametrize("inside", [True, False], ids=["relative", "file-uri"])
def test_quotes_cannot_break_out_of_an_attribute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, inside: bool
) -> None:
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path if inside else tmp_path / "elsewhere")
    tricky = tmp_path / 'a" onmouseover="alert(1)'
    markup = _html.file_link(tricky)
    assert 'onmouseover="' not in markup
    parsed = check_html(markup)
    assert parsed.tags == ["a", "code"] and str(tricky) in parsed.text


def test_links_are_relative_under_the_working_folder_else_file_uris(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "runs" / "r 1" / "stdout"
    monkeypatch.chdir(tmp_path)
    assert _html.href(log) == "runs/r%201/stdout"
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert _html.href(log) == log.as_uri()  # elsewhere: absolute, percent-encoded
    assert _html.file_link(None) == "—"


def test_pipeline_step_names_reasons_and_live_rows_are_escaped() -> None:
    step = StepReport(
        name="s", state=tether.StepState.FAILED, reason=SCRIPT, runs=[MemberReport(index=0)]
    )
    _no_raw_script(step._repr_html_())
    check_html(step._repr_html_())
    table = LiveTable(SCRIPT, [SCRIPT], active=False)
    table.update(SCRIPT, "FAILED", detail=SCRIPT)
    _no_raw_script(table._repr_html_())
    assert check_html(table._repr_html_()).text.count(SCRIPT) == 3


async def test_a_handle_escapes_its_job_name_and_run_id(tmp_path: Path) -> None:
    backend = tether.DummyConfig(runs_dir=tmp_path).create()
    handle = await backend.submit(tether.Job(name="x<script>", command="true"))
    markup = handle._repr_html_()
    assert "<script>" not in markup and "x&lt;script&gt;" in markup
    check_html(markup)


# -- what is shown ----------------------------------------------------------------------


async def test_a_local_result_shows_state_colour_times_logs_and_outputs(tmp_path: Path) -> None:
    backend = tether.LocalConfig().create()
    job = tether.Job(
        name="out", command="echo hi > a.txt; echo warn >&2; exit 2", outputs=["*.txt"]
    )
    handle = await backend.submit(job)
    result = await handle.wait()
    markup = result._repr_html_()
    parsed = check_html(markup)
    assert "FAILED" in parsed.text and result.run_id in parsed.text
    assert re.search(r"exit code\s*2", parsed.text)
    assert _html.STATE_COLOURS["FAILED"] in markup
    assert result.run_dir is not None
    for name in ("stdout", "stderr", "a.txt"):  # the run folder is not under the cwd
        assert f'href="{(result.run_dir / name).as_uri()}"' in markup
    assert f'href="{result.run_dir.as_uri()}"' in markup
    assert "warn" in parsed.text  # the error carries the stderr tail
    for label in ("started", "ended", "duration"):
        assert label in parsed.text
    # The handle shows the same result once terminal, under its own class name.
    handle_text = check_html(handle._repr_html_()).text
    assert "LocalRunHandle" in handle_text and "a.txt" in handle_text


async def test_a_running_handle_says_its_state_is_the_last_observed(tmp_path: Path) -> None:
    backend = tether.DummyConfig(runs_dir=tmp_path, duration=30.0).create()
    handle = await backend.submit(tether.Job(name="slow", command="true"))
    try:
        await handle.refresh()
        text = check_html(handle._repr_html_()).text
        assert handle.state.value in text and "refresh()" in text and handle.run_id in text
        assert "DummyRunHandle" in text
        assert "\n" not in repr(handle)  # the terminal repr stays one line
    finally:
        await handle.cancel()


async def test_secret_env_values_never_appear(tmp_path: Path) -> None:
    secret = "hunter2-very-secret"
    job = tether.Job(name="s", command="true", env={"TOKEN": SecretStr(secret), "PLAIN": "p"})
    config = tether.DummyConfig(runs_dir=tmp_path, env_vars={"KEY": SecretStr(secret)})
    handle = await config.create().submit(job)
    result = await handle.wait()
    for markup in (handle._repr_html_(), result._repr_html_(), repr(handle)):
        assert secret not in markup


def test_a_call_value_is_shown_shortened_and_a_failing_repr_does_not_break_it() -> None:
    class Loud:
        def __repr__(self) -> str:
            raise RuntimeError("no")

    long = tether.RunResult(run_id="r", state=tether.RunState.SUCCEEDED, value="x" * 1000)
    assert len(check_html(long._repr_html_()).text) < 1000
    loud = tether.RunResult(run_id="r", state=tether.RunState.SUCCEEDED, value=Loud())
    assert "repr failed: RuntimeError" in check_html(loud._repr_html_()).text


def test_every_state_has_a_colour() -> None:
    names = {s.value for s in tether.RunState} | {s.value for s in tether.StepState}
    assert names <= set(_html.STATE_COLOURS)
    assert len(set(_html.STATE_COLOURS.values())) >= 7  # told apart at a glance


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "—"), (0.25, "0.25 s"), (42.0, "42.0 s"), (184, "3 min 04 s"), (7380, "2 h 03 min")],
)
def test_durations_read_naturally(seconds: float | None, text: str) -> None:
    assert _html.duration(seconds) == text


def test_times_show_the_local_zone_offset() -> None:
    moment = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
    shown = _html.when(moment)
    assert shown == moment.astimezone().isoformat(sep=" ", timespec="seconds")
    assert _html.when(moment + timedelta(seconds=1)) != shown


async def test_a_pipeline_report_shows_every_step_and_the_failure(tmp_path: Path) -> None:
    ok = tether.Step("ok", tether.Job(command="true"))
    failing = tether.DummyConfig(runs_dir=tmp_path, outcome="failed", exit_code=4)
    bad = tether.Step("bad", tether.Job(command="exit {n}"), backend=failing, over={"n": [1, 2]})
    after = tether.Step("after", tether.Job(command="true"), depends_on=[bad])
    result = await tether.Pipeline(
        [ok, bad, after], name="p<1>", backend=tether.DummyConfig(runs_dir=tmp_path)
    ).run(fail_fast=False)
    assert not result.success
    markup = result._repr_html_()
    parsed = check_html(markup)
    assert "p<1>" in parsed.text and "<1>" not in markup  # the pipeline's name, escaped
    assert "SKIPPED" in parsed.text and "FAILED" in parsed.text and "SUCCEEDED" in parsed.text
    assert result.message in parsed.text
    assert "1/1 succeeded" in parsed.text
    step_text = check_html(result.steps["bad"]._repr_html_()).text
    assert "bad" in step_text and "run" in step_text
    assert "\n" not in repr(result) and "bad=FAILED" in repr(result)


def test_cache_stats_show_sizes(tmp_path: Path) -> None:
    store = tether.SQLiteStore(tmp_path / "c.sqlite")
    stats = store.stats()
    text = check_html(stats._repr_html_()).text
    assert "CacheStats" in text and "c.sqlite" in text and "0 B" in text and "in flight" in text
    assert _html.size(3 * 1024**3 + 1) == "3.0 GiB"


def test_an_ensemble_shows_its_function_members_and_seed() -> None:
    pytest.importorskip("numpy")
    text = check_html(tether.Ensemble(abs, 12, seed=99)._repr_html_()).text
    assert "abs" in text and "12" in text and "99" in text


# -- the live table, outside a kernel ---------------------------------------------------


def test_outside_a_kernel_nothing_is_wanted_and_nothing_draws() -> None:
    assert not in_kernel()
    assert not wanted(None) and not wanted(True) and not wanted(False)
    with live_table("t", ["a", "b"], progress=True) as table:
        table.update("a", tether.RunState.SUCCEEDED, detail="done")
        table.update("b", "FAILED")
    assert table.draws == 0 and table.closed
    assert repr(table) == "t: 2/2 done (1 SUCCEEDED, 1 FAILED)"


def test_progress_must_be_a_bool_or_none() -> None:
    with pytest.raises(TypeError, match="progress must be True, False or None"):
        wanted("yes")  # type: ignore[arg-type]


def test_a_long_table_shows_the_unfinished_and_failed_rows_first() -> None:
    table = LiveTable("many", [str(i) for i in range(100)], max_rows=5, active=False)
    for i in range(100):
        table.update(str(i), "SUCCEEDED")
    table.update("42", "FAILED", detail="bad")
    table.update("77", "RUNNING")
    parsed = check_html(table._repr_html_())
    assert "99/100 done" in parsed.text and "… and 95 more" in parsed.text
    assert "bad" in parsed.text and "77" in parsed.text
    assert parsed.tags.count("tr") == 1 + 5  # the header and five rows
