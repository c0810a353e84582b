"""The dashboard's actions: cancel a run, cancel a pipeline step.

Each action is a POST whose request must pass :meth:`Guard.action_refusal` (the
token in the ``X-Tether-Token`` header or a ``token`` form field, and no foreign
``Origin``). A script's ``fetch`` gets JSON back; a plain HTML form post is sent
back to the page it came from.
"""

from __future__ import annotations

from urllib.parse import parse_qs

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from ..errors import TetherError
from ..handle import RunHandle
from ._security import TOKEN_HEADER, Guard

#: The largest form body an action reads (it only ever holds a token).
MAX_FORM = 4096
FORM = "application/x-www-form-urlencoded"


async def _token(request: Request) -> tuple[str | None, bool]:
    """The token the request carries, and whether it came as a plain form post."""
    header = request.headers.get(TOKEN_HEADER)
    if header is not None:
        return header, False
    if request.headers.get("content-type", "").split(";")[0].strip() != FORM:
        return None, False
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM:
            return None, True
    values = parse_qs(body.decode(errors="replace")).get("token")
    return (values[0] if values else None), True


async def check(request: Request, guard: Guard) -> tuple[Response | None, bool]:
    """A refusal response when the request may not act, else None; and whether the
    request is a form post (answered with a redirect rather than JSON)."""
    token, form = await _token(request)
    why = guard.action_refusal(
        token=token,
        origin=request.headers.get("origin"),
        fetch_site=request.headers.get("sec-fetch-site"),
    )
    if why is None:
        return None, form
    return JSONResponse({"ok": False, "message": why}, status_code=403), form


def answer(ok: bool, message: str, *, form: bool, back: str, status: int = 200) -> Response:
    """The action's outcome: JSON for scripts, a redirect back for form posts."""
    if form and ok:
        return RedirectResponse(back, status_code=303)
    return JSONResponse({"ok": ok, "message": message}, status_code=status)


async def cancel_handles(handles: list[RunHandle]) -> tuple[list[str], list[str]]:
    """Cancel every handle that is not terminal, at once; (cancelled ids, errors)."""
    cancelled: list[str] = []
    errors: list[str] = []

    async def one(handle: RunHandle) -> None:
        try:
            await handle.refresh()
            if handle.state.is_terminal:
                return
            await handle.cancel()
        except (TetherError, OSError) as exc:
            errors.append(f"{handle.run_id}: {str(exc).splitlines()[0]}")
            return
        cancelled.append(handle.run_id)

    async with anyio.create_task_group() as tg:
        for handle in handles:
            tg.start_soon(one, handle)
    return sorted(cancelled), errors
