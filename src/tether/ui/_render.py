"""The dashboard's HTML: whole pages, and the fragments live events replace.

Every page is plain server-rendered HTML with one stylesheet and one small script
(``static/``); an element whose ``id`` a live event names is re-rendered here by
the same function that drew it first. Everything from runs and records goes through
:func:`esc`. Secret values never reach these functions: jobs and configs are shown
through their saved-record form (which leaves secrets out), and env values whose
names look like credentials are masked as well.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, urlencode

from .._html import duration, esc, size, when
from ..cli._ls import age
from ..handle import RunHandle
from ._sources import CacheRow, PipelineView, RunRow

STATES = ("PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT", "LOST")

#: Env names whose values are masked even when they were not marked secret.
_CREDENTIAL = re.compile(r"secret|token|passw|credential|api[_-]?key|private", re.IGNORECASE)
MASK = "••••••"

_NAV = (
    ("runs", "/", "Runs"),
    ("pipelines", "/pipelines", "Pipelines"),
    ("cache", "/cache", "Cache"),
)


def page(title: str, body: str, *, token: str, active: str = "", events: str | None = None) -> str:
    """A whole page: header and navigation, ``body``, and the live-events source."""
    links = "".join(
        f'<a href="{href}"{" class=active" if key == active else ""}>{label}</a>'
        for key, href, label in _NAV
    )
    source = f' data-events="{esc(events)}"' if events else ""
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta name="tether-token" content="{esc(token)}">'
        f"<title>{esc(title)} · tether</title>"
        '<link rel="stylesheet" href="/static/dashboard.css">'
        '<script src="/static/dashboard.js" defer></script></head>'
        f"<body{source}><header><span class=brand>tether</span><nav>{links}</nav>"
        '<span id="live" class="live" data-state="off">static</span></header>'
        f'<main><div id="flash" role="status"></div>{body}</main></body></html>'
    )


def badge(state: str) -> str:
    """A state as a coloured label."""
    return f'<span class="badge state-{esc(state)}">{esc(state)}</span>'


def _table(headers: Iterable[str], body_id: str, body: str, *, kind: str = "") -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    return (
        f'<table class="grid {kind}"><thead><tr>{head}</tr></thead>'
        f'<tbody id="{body_id}">{body}</tbody></table>'
    )


def _rows(pairs: Iterable[tuple[str, str]]) -> str:
    return "".join(f"<tr><th>{esc(k)}</th><td>{v}</td></tr>" for k, v in pairs)


# -- the runs list -------------------------------------------------------------------


def run_link(run_id: str) -> str:
    """The run page's address."""
    return f"/runs/{quote(run_id)}"


def keep(rows: list[RunRow], *, state: str, backend: str) -> list[RunRow]:
    """The rows the filters let through ('' lets everything through)."""
    return [
        row
        for row in rows
        if (not state or row.state == state) and (not backend or row.backend == backend)
    ]


def runs_body(rows: list[RunRow]) -> str:
    """The rows of the runs table (the fragment live events replace)."""
    if not rows:
        return '<tr><td colspan=8 class="muted">No runs.</td></tr>'
    now = time.time()
    out = []
    for row in rows:
        lasted = row.duration
        if lasted is None and row.state == "RUNNING":
            lasted = now - row.submitted
        exit_code = "" if row.exit_code is None else str(row.exit_code)
        out.append(
            f'<tr data-run="{esc(row.run_id)}" data-state="{esc(row.state)}">'
            f'<td><a href="{run_link(row.run_id)}">{esc(row.run_id)}</a></td>'
            f"<td>{esc(row.name)}</td><td>{badge(row.state)}</td><td>{esc(row.backend)}</td>"
            f'<td title="{esc(time.ctime(row.submitted))}">{age(now - row.submitted)}</td>'
            f"<td>{duration(lasted)}</td><td>{esc(exit_code)}</td>"
            f'<td class="note">{esc(row.error or "")}</td></tr>'
        )
    return "".join(out)


def _select(name: str, chosen: str, options: Iterable[str], every: str) -> str:
    items = [f'<option value=""{" selected" if not chosen else ""}>{esc(every)}</option>']
    items += [
        f'<option value="{esc(o)}"{" selected" if o == chosen else ""}>{esc(o)}</option>'
        for o in options
    ]
    return f'<label>{name} <select name="{name}" data-autosubmit>{"".join(items)}</select></label>'


def runs_page(
    rows: list[RunRow], *, state: str, backend: str, folders: list[str], token: str
) -> str:
    """The front page: every run, filtered by state and backend, updating live."""
    backends = sorted({row.backend for row in rows} | ({backend} if backend else set()))
    filters = (
        '<form class="filters" method="get" action="/">'
        f"{_select('state', state, STATES, 'every state')}"
        f"{_select('backend', backend, backends, 'every backend')}"
        '<button type="submit">Filter</button></form>'
    )
    query = urlencode({k: v for k, v in (("state", state), ("backend", backend)) if v})
    shown = keep(rows, state=state, backend=backend)
    table = _table(
        ["run", "job", "state", "backend", "age", "duration", "exit", "note"],
        "runs-body",
        runs_body(shown),
        kind="runs",
    )
    where = ", ".join(esc(f) for f in folders) or "no runs folder"
    body = f'<h1>Runs</h1><p class="muted">Runs folders: {where}</p>{filters}{table}'
    return page("Runs", body, token=token, active="runs", events=f"/events/runs?{query}")


# -- one run ---------------------------------------------------------------------------


def _masked(record: Mapping[str, Any]) -> dict[str, Any]:
    """A job or config record with credential-looking env values masked."""
    clean = dict(record)
    for key in ("env", "env_vars"):
        env = clean.get(key)
        if isinstance(env, dict):
            clean[key] = {k: MASK if _CREDENTIAL.search(k) else v for k, v in env.items()}
    if isinstance(clean.get("backend"), dict):  # wrappers (cache, retry) hold their inner config
        clean["backend"] = _masked(clean["backend"])
    return clean


def _json(data: Any) -> str:
    text = json.dumps(data, indent=2, default=str, ensure_ascii=False)
    return f'<pre class="json">{esc(text)}</pre>'


def run_status(handle: RunHandle, base: str) -> str:
    """The state, result and outputs of a run (the fragment live events replace)."""
    result = handle.last_result
    pairs = [
        ("state", badge(handle.state.value)),
        ("backend", esc(handle.backend_type)),
        ("run folder", esc(handle.run_dir or "—")),
    ]
    if result is not None:
        pairs += [
            ("exit code", esc("—" if result.exit_code is None else result.exit_code)),
            ("started", when(result.started_at)),
            ("ended", when(result.ended_at)),
            ("duration", duration(result.duration)),
        ]
        if result.error:
            pairs.append(("error", f'<span class="error">{esc(result.error)}</span>'))
    body = f'<table class="facts">{_rows(pairs)}</table>'
    if result is not None and result.traceback:
        body += f'<h3>Traceback</h3><pre class="log">{esc(result.traceback)}</pre>'
    if result is not None:
        outputs = "".join(f"<li>{esc(path)}</li>" for path in result.outputs)
        body += f"<h3>Outputs</h3><ul class=outputs>{outputs or '<li class=muted>none</li>'}</ul>"
    if not handle.state.is_terminal:
        body += (
            f'<button class="danger" data-action="cancel" data-url="{esc(base)}/cancel">'
            "Cancel this run</button>"
        )
    return body


def run_page(handle: RunHandle, record: Mapping[str, Any], *, base: str, token: str) -> str:
    """One run: status, job, config (from its saved ``record``), and its stdout and
    stderr streaming live."""
    body = (
        f"<h1>Run <code>{esc(handle.run_id)}</code></h1>"
        f'<section id="status">{run_status(handle, base)}</section>'
        '<section class="logs"><div><h2>stdout</h2><pre id="stdout" class="log"></pre></div>'
        '<div><h2>stderr</h2><pre id="stderr" class="log"></pre></div></section>'
        f"<details open><summary>Job</summary>{_json(_masked(record.get('job') or {}))}</details>"
        f"<details><summary>Config</summary>{_json(_masked(record.get('config') or {}))}</details>"
    )
    return page(f"Run {handle.run_id}", body, token=token, active="runs", events=f"{base}/events")


# -- pipelines -----------------------------------------------------------------------


def step_link(key: int, step: str) -> str:
    """Where clicking a step in the picture goes."""
    return f"/pipelines/{key}/steps/{quote(step)}"


def pipeline_body(view: PipelineView, svg: str) -> str:
    """A pipeline's picture and step table (the fragment live events replace)."""
    if view.error is not None:
        return f'<p class="error">{esc(view.error)}</p>'
    rows = []
    for step in view.steps.values():
        runs = ", ".join(
            f'<a href="{step_link(view.key, step.name)}/runs/{m.index}">{esc(m.run_id or "…")}</a>'
            f" {badge(m.state)}"
            for m in step.members
        )
        cancel = ""
        going = ("RUNNING", "PENDING", "SUBMITTING")
        if step.state == "RUNNING" and any(m.state in going for m in step.members):
            cancel = (
                f'<button class="danger small" data-action="cancel" '
                f'data-url="{step_link(view.key, step.name)}/cancel">Cancel step</button>'
            )
        rows.append(
            f'<tr data-step="{esc(step.name)}"><td>{esc(step.name)}</td>'
            f"<td>{badge(step.state)}</td><td>{runs}</td>"
            f'<td class="note">{esc(step.reason or "")}</td><td>{cancel}</td></tr>'
        )
    note = (
        ""
        if view.has_edges
        else (
            '<p class="muted">No pipeline file found beside the state file: steps are drawn '
            "without their dependencies (give the pipeline file to <code>--pipeline</code>).</p>"
        )
    )
    status = f"{badge(view.state)} {'running now' if view.running else 'not running'}"
    table = _table(["step", "state", "runs", "reason", ""], "steps-body", "".join(rows))
    return f'<p>{status}</p><div class="picture">{svg}</div>{note}{table}'


def pipeline_page(view: PipelineView, svg: str, *, token: str) -> str:
    """One pipeline: its DAG, coloured by state, updating live."""
    body = (
        f"<h1>Pipeline {esc(view.name)}</h1><p class=muted>State file {esc(view.path)}</p>"
        f'<section id="pipeline">{pipeline_body(view, svg)}</section>'
    )
    return page(
        f"Pipeline {view.name}",
        body,
        token=token,
        active="pipelines",
        events=f"/events/pipelines/{view.key}",
    )


def pipelines_body(views: list[PipelineView]) -> str:
    """The rows of the pipelines table."""
    if not views:
        return (
            '<tr><td colspan=4 class="muted">No pipelines: start the dashboard with '
            "<code>--pipeline STATE</code> (a state file or a pipeline file).</td></tr>"
        )
    out = []
    for view in views:
        done = sum(1 for s in view.steps.values() if s.state == "SUCCEEDED")
        out.append(
            f'<tr><td><a href="/pipelines/{view.key}">{esc(view.name)}</a></td>'
            f"<td>{badge(view.state)}</td><td>{done}/{len(view.steps)}</td>"
            f'<td class="note">{esc(view.path)}</td></tr>'
        )
    return "".join(out)


def pipelines_page(views: list[PipelineView], *, token: str) -> str:
    """Every pipeline given to the dashboard."""
    table = _table(
        ["pipeline", "state", "steps done", "state file"], "pipelines-body", pipelines_body(views)
    )
    return page(
        "Pipelines",
        f"<h1>Pipelines</h1>{table}",
        token=token,
        active="pipelines",
        events="/events/pipelines",
    )


def step_page(view: PipelineView, step: str, *, token: str) -> str:
    """A step with several runs: a list to pick one from."""
    found = view.steps[step]
    items = "".join(
        f'<li><a href="{step_link(view.key, step)}/runs/{m.index}">{esc(m.run_id or "…")}</a> '
        f"{badge(m.state)}</li>"
        for m in found.members
    )
    body = (
        f'<h1>Step {esc(step)} of <a href="/pipelines/{view.key}">{esc(view.name)}</a></h1>'
        f"<p>{badge(found.state)} {esc(found.reason or '')}</p>"
        f"<ul>{items or '<li class=muted>no runs yet</li>'}</ul>"
    )
    return page(f"Step {step}", body, token=token, active="pipelines")


# -- the cache -----------------------------------------------------------------------


def cache_body(rows: list[CacheRow]) -> str:
    """The rows of the cache table."""
    if not rows:
        return '<tr><td colspan=7 class="muted">The cache is empty.</td></tr>'
    now = time.time()
    return "".join(
        f'<tr data-key="{esc(r.key)}"><td><code title="{esc(r.key)}">{esc(r.key[:12])}</code></td>'
        f"<td>{esc(r.name)}</td><td>{esc(r.backend)}</td><td>{badge(r.state)}</td>"
        f'<td class="num">{size(r.size)}</td><td class="num">{r.hits}</td>'
        f"<td>{age(now - r.last_used)} ago</td></tr>"
        for r in rows
    )


def cache_page(rows: list[CacheRow], *, location: str, error: str | None, token: str) -> str:
    """The cache store's entries: hits and sizes."""
    total = sum(r.size for r in rows)
    hits = sum(r.hits for r in rows)
    summary = f"{len(rows)} entries, {size(total)}, {hits} hits — store {esc(location)}"
    problem = f'<p class="error">{esc(error)}</p>' if error else ""
    table = _table(
        ["key", "job", "backend", "state", "size", "hits", "last used"],
        "cache-body",
        cache_body(rows),
    )
    body = f'<h1>Cache</h1><p class="muted" id="cache-summary">{summary}</p>{problem}{table}'
    return page("Cache", body, token=token, active="cache", events="/events/cache")


def message_page(status: int, message: str) -> str:
    """A page that only says why (no token, no such run); it holds no token."""
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{status} · tether</title>"
        '<link rel="stylesheet" href="/static/dashboard.css"></head>'
        f'<body><main><h1>{status}</h1><p class="error">{esc(message)}</p></main></body></html>'
    )
