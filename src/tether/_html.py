"""HTML renderings for Jupyter: handles, results, pipeline reports, cache stats, live tables.

Every ``_repr_html_`` method of tether calls one function here, so the look is
defined in one place. Everything that comes from users or from runs (run ids,
names, paths, errors, tracebacks, values) goes through :func:`html.escape`.

Links to files (run folders, stdout, stderr, outputs) are relative links when the
file is under the working folder (a notebook's kernel works in the notebook's
folder, which Jupyter serves), else absolute ``file://`` URIs (see :func:`href`);
the path is shown as text too, to copy. Nothing here reads files, environments or
configs: no secret value can reach the page.

Styles are inline (notebooks drop ``<style>`` blocks of untrusted outputs) and the
markup is plain tables, which every notebook front end renders.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

if TYPE_CHECKING:
    from .cache.store import CacheStats
    from .ensemble import Ensemble
    from .handle import RunHandle
    from .pipelines.report import MemberReport, PipelineResult, StepReport
    from .result import RunResult

#: Background colour of each state's badge (run states, step states, stage states).
STATE_COLOURS = {
    "PENDING": "#6b7280",  # grey: nothing happened yet
    "RUNNING": "#2563eb",  # blue: under way
    "SUCCEEDED": "#15803d",  # green
    "FAILED": "#dc2626",  # red
    "CANCELLED": "#b45309",  # amber: stopped on purpose
    "TIMED_OUT": "#c2410c",  # orange: stopped by the timeout
    "LOST": "#7c3aed",  # purple: outcome unknown
    "SKIPPED": "#9ca3af",  # light grey: never started
}

#: Most list items (outputs, runs, rows) shown before "… and N more".
MAX_ITEMS = 20
#: Most characters of a value's repr shown.
MAX_VALUE = 200

_BOX = "font-family:var(--jp-ui-font-family,sans-serif);font-size:13px;line-height:1.4"
_TABLE = "border-collapse:collapse;margin-top:4px"
_KEY = "text-align:left;padding:1px 12px 1px 0;color:#6b7280;font-weight:normal;vertical-align:top"
_CELL = "text-align:left;padding:1px 12px 1px 0;vertical-align:top"


def esc(value: object) -> str:
    """``str(value)`` escaped for HTML text and attribute values."""
    return html.escape(str(value), quote=True)


def badge(state: object) -> str:
    """A state as a coloured label (``RunState``, ``StepState`` or a stage's string)."""
    name = str(getattr(state, "value", state))
    colour = STATE_COLOURS.get(name, "#6b7280")
    return (
        f'<span style="background:{colour};color:#fff;padding:0 6px;border-radius:3px;'
        f'font-weight:600;font-size:12px">{esc(name)}</span>'
    )


def when(moment: datetime | None) -> str:
    """A time in the viewer's local zone, to the second, with its UTC offset."""
    if moment is None:
        return "—"
    return esc(moment.astimezone().isoformat(sep=" ", timespec="seconds"))


def duration(seconds: float | None) -> str:
    """``0.42 s``, ``14.2 s``, ``3 min 04 s``, ``2 h 03 min``."""
    if seconds is None:
        return "—"
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def size(count: int) -> str:
    """Bytes as ``512 B``, ``3.4 KiB``, ``1.2 GiB``."""
    amount = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if amount < 1024 or unit == "TiB":
            return f"{count} B" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    raise AssertionError("unreachable")


def href(path: Path | str) -> str | None:
    """The link target of a file: relative when under the working folder, else ``file://``.

    A notebook kernel works in the notebook's folder, and Jupyter serves that
    folder: a relative link opens the file in the notebook's own front end. Any
    other path gets an absolute ``file://`` URI (VS Code and desktop viewers open
    it; a browser may refuse ``file://`` links from a served page). None when the
    path cannot be written as a URI.
    """
    target = Path(path).absolute()
    try:
        return quote(target.relative_to(Path.cwd()).as_posix())
    except (ValueError, OSError):  # outside the working folder (or it is gone)
        pass
    try:
        return target.as_uri()
    except ValueError:
        return None


def file_link(path: Path | str | None, text: str | None = None) -> str:
    """A link to ``path`` (see :func:`href`) showing the path, or ``text``; ``—`` for None."""
    if path is None:
        return "—"
    label = f"<code>{esc(text or path)}</code>"
    target = href(path)
    if target is None:
        return label
    return f'<a href="{esc(target)}" target="_blank">{label}</a>'


def _more(total: int, shown: int) -> str:
    return f"<div>… and {total - shown} more</div>" if total > shown else ""


def _value(value: Any) -> str:
    try:
        text = repr(value)
    except Exception as exc:  # a user's __repr__ may fail; the page must not
        text = f"<repr failed: {type(exc).__name__}>"
    if len(text) > MAX_VALUE:
        text = text[: MAX_VALUE - 1] + "…"
    return f"<code>{esc(text)}</code>"


def _rows(rows: Iterable[tuple[str, str]]) -> str:
    """A two-column table; keys are ours (escaped anyway), values are HTML already."""
    body = "".join(
        f'<tr><th style="{_KEY}">{esc(key)}</th><td style="{_CELL}">{value}</td></tr>'
        for key, value in rows
    )
    return f'<table style="{_TABLE}">{body}</table>'


def _grid(headers: Iterable[str], rows: Iterable[Iterable[str]]) -> str:
    """A table with a header row; cells are HTML already."""
    head = "".join(f'<th style="{_KEY}">{esc(h)}</th>' for h in headers)
    body = "".join(
        "<tr>" + "".join(f'<td style="{_CELL}">{cell}</td>' for cell in row) + "</tr>"
        for row in rows
    )
    return f'<table style="{_TABLE}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _box(kind: str, title: str, state: object | None, body: str) -> str:
    """The frame of every rendering: kind, a title in code type, the state, the body."""
    header = f"<strong>{esc(kind)}</strong> <code>{esc(title)}</code>"
    if state is not None:
        header += f" {badge(state)}"
    return f'<div class="tether-repr" style="{_BOX}"><div>{header}</div>{body}</div>'


def _pre(text: str) -> str:
    return f'<pre style="margin:0;white-space:pre-wrap">{esc(text)}</pre>'


# -- results and handles ------------------------------------------------------------


def _result_rows(result: RunResult) -> list[tuple[str, str]]:
    rows = [
        ("exit code", esc(result.exit_code) if result.exit_code is not None else "—"),
        ("started", when(result.started_at)),
        ("ended", when(result.ended_at)),
        ("duration", duration(result.duration)),
    ]
    if result.run_dir is not None:
        rows.append(("run folder", file_link(result.run_dir)))
    for name in ("stdout", "stderr"):
        path = getattr(result, name)
        if path is not None:
            rows.append((name, file_link(path, _relative(path, result.run_dir))))
    if result.outputs:
        links = [file_link(p, _relative(p, result.run_dir)) for p in result.outputs[:MAX_ITEMS]]
        rows.append(("outputs", "<br>".join(links) + _more(len(result.outputs), MAX_ITEMS)))
    if result.value is not None:
        rows.append(("value", _value(result.value)))
    if result.error:
        rows.append(("error", _pre(result.error)))
    if result.traceback:
        rows.append(
            ("traceback", f"<details><summary>show</summary>{_pre(result.traceback)}</details>")
        )
    return rows


def _relative(path: Path, folder: Path | None) -> str:
    """``path`` relative to the run folder when inside it (shorter to read)."""
    if folder is not None:
        try:
            return str(path.relative_to(folder))
        except ValueError:
            pass
    return str(path)


def result_html(result: RunResult) -> str:
    """A run's result: state, exit code, times, run folder, log links, outputs, error."""
    return _box("RunResult", result.run_id, result.state, _rows(_result_rows(result)))


def handle_html(handle: RunHandle) -> str:
    """A handle: the last observed state, and the whole result once it is terminal.

    Sync and I/O-free (a repr must not touch the backend): a running handle shows
    what it last saw; ``await handle.refresh()`` and show it again for news.
    """
    rows = [("backend", esc(handle.backend_type)), ("job", esc(handle.job.name))]
    result = handle.last_result
    if result is not None:
        rows += _result_rows(result)
    else:
        if handle.run_dir is not None:
            rows.append(("run folder", file_link(handle.run_dir)))
        if not handle.state.is_terminal:
            note = "last observed state; <code>await handle.refresh()</code> for news"
            rows.append(("note", note))
    return _box(type(handle).__name__, handle.run_id, handle.state, _rows(rows))


# -- pipelines ----------------------------------------------------------------------


def _member_row(member: MemberReport) -> list[str]:
    result = member.result
    state = member.state or "PENDING"
    if result is None:
        return [esc(member.index), esc(member.run_id or "—"), badge(state), "—", "—", "", ""]
    logs = " ".join(
        file_link(path, name)
        for name, path in (("stdout", result.stdout), ("stderr", result.stderr))
        if path is not None
    )
    return [
        esc(member.index),
        esc(member.run_id or result.run_id),
        badge(state),
        esc(result.exit_code) if result.exit_code is not None else "—",
        duration(result.duration),
        logs,
        _pre(result.error) if result.error else "",
    ]


def _members(runs: list[MemberReport]) -> str:
    headers = ["#", "run id", "state", "exit code", "duration", "logs", "error"]
    shown = runs[:MAX_ITEMS]
    return _grid(headers, (_member_row(m) for m in shown)) + _more(len(runs), len(shown))


def _elapsed(start: datetime | None, end: datetime | None) -> float | None:
    return None if start is None or end is None else (end - start).total_seconds()


def step_html(step: StepReport) -> str:
    """A pipeline step: its state and reason, stages, runs and postprocessing."""
    rows = [
        ("started", when(step.started_at)),
        ("ended", when(step.ended_at)),
        ("duration", duration(_elapsed(step.started_at, step.ended_at))),
    ]
    if step.reason:
        rows.append(("reason", _pre(step.reason)))
    if step.stages:
        rows.append(
            ("stages", " ".join(f"{esc(n)} {badge(s.state)}" for n, s in step.stages.items()))
        )
    if step.runs:
        rows.append(("runs", _members(step.runs)))
    bad = [r for r in step.postprocess_results if not r.get("success", True)]
    if bad:
        rows.append(("postprocess", _pre(str(bad[0].get("message", "failed")))))
    return _box("Step", step.name, step.state, _rows(rows))


def pipeline_html(result: PipelineResult) -> str:
    """A pipeline's report: overall outcome, then one line per step with its runs."""
    state = "SUCCEEDED" if result.success else "FAILED"
    rows = [
        ("message", esc(result.message)),
        ("started", when(result.started_at)),
        ("ended", when(result.ended_at)),
        ("duration", duration(_elapsed(result.started_at, result.ended_at))),
    ]
    if result.state_file is not None:
        rows.append(("state file", file_link(result.state_file)))
    lines = []
    for name, step in result.steps.items():
        done = sum(1 for run in step.runs if str(run.state) == "SUCCEEDED")
        runs = f"{done}/{len(step.runs)} succeeded" if step.runs else "—"
        details = (
            f"<details><summary>runs</summary>{_members(step.runs)}</details>" if step.runs else ""
        )
        lines.append(
            [
                f"<code>{esc(name)}</code>" + (" (resumed)" if step.resumed else ""),
                badge(step.state),
                esc(runs),
                duration(_elapsed(step.started_at, step.ended_at)),
                (_pre(step.reason) if step.reason else "") + details,
            ]
        )
    table = _grid(["step", "state", "runs", "duration", "details"], lines)
    return _box("Pipeline", result.name, state, _rows(rows) + table)


# -- cache and ensembles ------------------------------------------------------------


def cache_stats_html(stats: CacheStats) -> str:
    """What a cache store holds: entries, sizes, blobs, runs in flight."""
    rows = [
        ("store", file_link(stats.path)),
        ("entries", esc(stats.entries)),
        ("size of entries", size(stats.size)),
        ("blobs", f"{stats.blobs} ({size(stats.blob_size)} on disk)"),
        ("in flight", esc(stats.in_flight)),
    ]
    return _box("CacheStats", Path(stats.path).name, None, _rows(rows))


def ensemble_html(ensemble: Ensemble) -> str:
    """An ensemble's definition: function, members and the root seed that reproduces it."""
    fn = ensemble.fn
    name = fn if isinstance(fn, str) else getattr(fn, "__qualname__", repr(fn))
    rows = [
        ("function", f"<code>{esc(name)}</code>"),
        ("members", esc(ensemble.n)),
        ("root seed", f"<code>{esc(ensemble.seed)}</code>"),
        ("seeds as", esc(ensemble.seed_as)),
    ]
    return _box("Ensemble", str(name), None, _rows(rows))


# -- live tables --------------------------------------------------------------------


def live_html(
    title: str,
    column: str,
    rows: Mapping[str, tuple[str, str | None]],
    *,
    total: int,
    max_rows: int,
    closed: bool,
) -> str:
    """A live table: a progress bar, counts by state, then the rows (key, state, detail).

    With more rows than ``max_rows``, the ones not finished well (running, failed)
    are shown first and the rest are counted.
    """
    done = sum(1 for state, _ in rows.values() if state not in ("PENDING", "RUNNING"))
    counts: dict[str, int] = {}
    for state, _ in rows.values():
        counts[state] = counts.get(state, 0) + 1
    if total > len(rows):
        counts["PENDING"] = counts.get("PENDING", 0) + total - len(rows)
    summary = " ".join(f"{badge(state)} {n}" for state, n in counts.items())
    bar = f'<progress value="{done}" max="{max(total, 1)}" style="width:200px"></progress>'
    header = f"{bar} {done}/{total} done {summary}"
    if closed:
        header += " (finished)" if done == total else " (stopped)"
    items = list(rows.items())
    if len(items) > max_rows:  # the interesting ones first; order kept within each group
        items.sort(key=lambda item: item[1][0] in ("SUCCEEDED", "SKIPPED"))
    shown = items[:max_rows]
    cells = ([f"<code>{esc(k)}</code>", badge(s), esc(note or "")] for k, (s, note) in shown)
    table = _grid([column, "state", "details"], cells)
    return _box("tether", title, None, f"<div>{header}</div>{table}{_more(len(items), len(shown))}")
