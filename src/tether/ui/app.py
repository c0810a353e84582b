"""The dashboard's ASGI app: its routes, and the guard every request passes.

``create_app`` builds a Starlette app from :class:`Settings`; :func:`tether.ui.serve`
serves it with uvicorn on 127.0.0.1. Pages are under ``/``, ``/runs/…``,
``/pipelines/…`` and ``/cache``; each has a live-event stream under ``…/events`` (or
``/events/…``), and the two actions are ``POST …/cancel``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import TetherError
from ..handle import RunHandle
from ..records import read_record
from ..registry import load_handle
from . import _render as render
from ._actions import answer, cancel_handles, check
from ._dag import dag_svg
from ._live import Emit, EventStream, every, run_events
from ._security import SECURITY_HEADERS, TOKEN_HEADER, Guard
from ._sources import Cache, CacheRow, Pipelines, Runs

STATIC = Path(__file__).parent / "static"


@dataclass
class Settings:
    """What one dashboard shows, and how it is reached."""

    guard: Guard
    runs_dirs: list[Path]
    pipelines: list[Path] = field(default_factory=list)
    cache_store: Path | None = None
    #: Seconds between looks at the records for live updates.
    interval: float = 1.0


class _Guarded:
    """Every request names this server in ``Host``; every page needs the token.

    ``GET …?token=T`` trades the token for the cookie and redirects to the same
    address without it (so it leaves the address bar and the history). POSTs go
    through to the actions, which check the token themselves (not the cookie).
    """

    def __init__(self, app: ASGIApp, guard: Guard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        response = self._gate(Request(scope))
        if response is not None:
            await response(scope, receive, send_secured)
        else:
            await self.app(scope, receive, send_secured)

    def _gate(self, request: Request) -> Response | None:
        guard = self.guard
        if not guard.host_ok(request.headers.get("host")):
            why = f"this dashboard answers at {guard.origin} only"
            return HTMLResponse(render.message_page(403, why), status_code=403)
        if request.url.path.startswith("/static/") or request.method not in ("GET", "HEAD"):
            return None
        offered = request.query_params.get("token")
        if offered is not None:
            if not guard.matches(offered):
                why = "wrong token: open the address `tether ui` printed"
                return HTMLResponse(render.message_page(403, why), status_code=403)
            rest = urlencode(
                [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
            )
            # One leading slash: "//host" would send the browser to another site.
            target = "/" + request.url.path.lstrip("/") + (f"?{rest}" if rest else "")
            response = RedirectResponse(target, status_code=303)
            response.set_cookie(guard.cookie, guard.token, httponly=True, samesite="strict")
            return response
        if guard.matches(request.cookies.get(guard.cookie)) or guard.matches(
            request.headers.get(TOKEN_HEADER)
        ):
            return None
        why = "this page needs the dashboard's token: open the address `tether ui` printed"
        return HTMLResponse(render.message_page(403, why), status_code=403)


def create_app(settings: Settings) -> ASGIApp:
    """The dashboard as an ASGI app (wrapped in its guard)."""
    runs = Runs(settings.runs_dirs, interval=settings.interval)
    pipelines = Pipelines(settings.pipelines)
    cache = Cache(settings.cache_store)
    guard = settings.guard
    token = guard.token
    interval = settings.interval

    def missing(what: str) -> HTMLResponse:
        return HTMLResponse(render.message_page(404, f"no {what} here"), status_code=404)

    # -- runs --------------------------------------------------------------------------

    async def runs_page(request: Request) -> Response:
        state = request.query_params.get("state", "")
        backend = request.query_params.get("backend", "")
        rows = await runs.snapshot()
        folders = [str(f) for f in settings.runs_dirs]
        return HTMLResponse(
            render.runs_page(rows, state=state, backend=backend, folders=folders, token=token)
        )

    async def runs_events(request: Request) -> Response:
        state = request.query_params.get("state", "")
        backend = request.query_params.get("backend", "")

        async def fragments() -> dict[str, str]:
            rows = render.keep(await runs.snapshot(), state=state, backend=backend)
            return {"runs-body": render.runs_body(rows)}

        return EventStream(lambda emit: every(interval, fragments, emit))

    async def handle_of(request: Request) -> RunHandle | None:
        """The run a ``/runs/{run_id}`` or ``/pipelines/…/runs/{index}`` address names."""
        params = request.path_params
        if "run_id" in params:
            record = runs.record_of(params["run_id"])
            if record is None:
                return None
            try:
                return await load_handle(record)
            except (TetherError, OSError, ValueError):
                return None
        key = params["key"]
        if not 0 <= key < len(pipelines):
            return None
        return await pipelines.member_handle(key, params["step"], params["index"])

    async def saved_record(request: Request) -> dict[str, Any] | None:
        """The run's saved record as written (it names secret variables; no values)."""
        params = request.path_params
        try:
            if "run_id" in params:
                path = runs.record_of(params["run_id"])
                return read_record(path) if path is not None else None
            step = (await pipelines.view(params["key"])).steps.get(params["step"])
        except (TetherError, OSError):
            return None
        members = step.members if step is not None else []
        return next((m.record for m in members if m.index == params["index"]), None)

    def base_of(request: Request) -> str:
        return request.url.path.removesuffix("/events").removesuffix("/cancel")

    async def run_page(request: Request) -> Response:
        handle = await handle_of(request)
        if handle is None:
            return missing("such run (its record is gone or unreadable)")
        record = await saved_record(request) or handle.to_record()
        page = render.run_page(handle, record, base=request.url.path, token=token)
        return HTMLResponse(page)

    async def run_stream(request: Request) -> Response:
        handle = await handle_of(request)
        if handle is None:
            return missing("such run")
        base = base_of(request)

        async def produce(emit: Emit) -> None:
            await run_events(handle, lambda h: render.run_status(h, base), emit, interval=interval)

        return EventStream(produce)

    async def cancel_run(request: Request) -> Response:
        refusal, form = await check(request, guard)
        if refusal is not None:
            return refusal
        handle = await handle_of(request)
        back = base_of(request)
        if handle is None:
            return answer(False, "no such run", form=form, back=back, status=404)
        cancelled, errors = await cancel_handles([handle])
        if errors:
            return answer(False, "; ".join(errors), form=form, back=back, status=500)
        said = f"cancelled {handle.run_id}" if cancelled else f"{handle.run_id} had already ended"
        return answer(True, said, form=form, back=back)

    # -- pipelines ---------------------------------------------------------------------

    async def pipeline_fragment(key: int) -> str:
        view = await pipelines.view(key)
        svg = dag_svg(view, lambda step: render.step_link(key, step))
        return render.pipeline_body(view, svg)

    async def pipelines_page(request: Request) -> Response:
        return HTMLResponse(render.pipelines_page(await pipelines.views(), token=token))

    async def pipelines_events(request: Request) -> Response:
        async def fragments() -> dict[str, str]:
            return {"pipelines-body": render.pipelines_body(await pipelines.views())}

        return EventStream(lambda emit: every(interval, fragments, emit))

    async def pipeline_page(request: Request) -> Response:
        key = request.path_params["key"]
        if not 0 <= key < len(pipelines):
            return missing("such pipeline")
        view = await pipelines.view(key)
        svg = dag_svg(view, lambda step: render.step_link(key, step))
        return HTMLResponse(render.pipeline_page(view, svg, token=token))

    async def pipeline_events(request: Request) -> Response:
        key = request.path_params["key"]
        if not 0 <= key < len(pipelines):
            return missing("such pipeline")

        async def fragments() -> dict[str, str]:
            return {"pipeline": await pipeline_fragment(key)}

        return EventStream(lambda emit: every(interval, fragments, emit))

    async def step_page(request: Request) -> Response:
        key, step = request.path_params["key"], request.path_params["step"]
        if not 0 <= key < len(pipelines):
            return missing("such pipeline")
        view = await pipelines.view(key)
        found = view.steps.get(step)
        if found is None:
            return missing("such step")
        if len(found.members) == 1:  # the usual case: the step's one run
            member = found.members[0]
            if member.run_id is not None and runs.record_of(member.run_id) is not None:
                return RedirectResponse(render.run_link(member.run_id), status_code=303)
            if member.record is not None:
                target = f"{render.step_link(key, step)}/runs/{member.index}"
                return RedirectResponse(target, status_code=303)
        return HTMLResponse(render.step_page(view, step, token=token))

    async def cancel_step(request: Request) -> Response:
        refusal, form = await check(request, guard)
        if refusal is not None:
            return refusal
        key, step = request.path_params["key"], request.path_params["step"]
        back = f"/pipelines/{key}"
        if not 0 <= key < len(pipelines):
            return answer(False, "no such pipeline", form=form, back=back, status=404)
        view = await pipelines.view(key)
        found = view.steps.get(step)
        if found is None:
            return answer(False, "no such step", form=form, back=back, status=404)
        handles = [
            handle
            for member in found.members
            if (handle := await pipelines.member_handle(key, step, member.index)) is not None
        ]
        cancelled, errors = await cancel_handles(handles)
        if errors:
            return answer(False, "; ".join(errors), form=form, back=back, status=500)
        said = f"cancelled {', '.join(cancelled)}" if cancelled else f"no run of {step} was going"
        return answer(True, said, form=form, back=back)

    # -- the cache ---------------------------------------------------------------------

    async def cache_fragments() -> tuple[dict[str, str], list[CacheRow], str | None]:
        try:
            rows, error = await cache.entries(), None
        except Exception as exc:  # a corrupt or locked store is a note on the page
            rows, error = [], f"cannot read the cache store: {type(exc).__name__}: {exc}"
        return {"cache-body": render.cache_body(rows)}, rows, error

    async def cache_page(request: Request) -> Response:
        _, rows, error = await cache_fragments()
        location = str(cache.location())
        return HTMLResponse(render.cache_page(rows, location=location, error=error, token=token))

    async def cache_events(request: Request) -> Response:
        async def fragments() -> dict[str, str]:
            return (await cache_fragments())[0]

        return EventStream(lambda emit: every(max(interval, 2.0), fragments, emit))

    member = "/pipelines/{key:int}/steps/{step}/runs/{index:int}"
    routes = [
        Route("/", runs_page),
        Route("/events/runs", runs_events),
        Route("/runs/{run_id}", run_page),
        Route("/runs/{run_id}/events", run_stream),
        Route("/runs/{run_id}/cancel", cancel_run, methods=["POST"]),
        Route("/pipelines", pipelines_page),
        Route("/events/pipelines", pipelines_events),
        Route("/pipelines/{key:int}", pipeline_page),
        Route("/events/pipelines/{key:int}", pipeline_events),
        Route("/pipelines/{key:int}/steps/{step}", step_page),
        Route("/pipelines/{key:int}/steps/{step}/cancel", cancel_step, methods=["POST"]),
        Route(member, run_page),
        Route(f"{member}/events", run_stream),
        Route(f"{member}/cancel", cancel_run, methods=["POST"]),
        Route("/cache", cache_page),
        Route("/events/cache", cache_events),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    return _Guarded(Starlette(routes=routes), guard)
