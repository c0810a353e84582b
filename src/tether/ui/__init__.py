"""``tether ui``: a local web dashboard of the runs, pipelines and cache tether can
re-attach to, updating live.

Served on 127.0.0.1 only, with a per-start token for every page and every action.
Needs the ``ui`` extra (``pip install 'tether[ui]'``: Starlette and uvicorn); nothing
here is imported by ``import tether``.
"""

from __future__ import annotations

from .app import Settings, create_app
from .server import serve

__all__ = ["Settings", "create_app", "serve"]
