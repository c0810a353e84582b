"""Local processes: detached, resumable runs on this machine.

Each run gets a folder and a small supervisor process (see ``tether._supervisor``)
started in a new session. The supervisor, not the Python process that submitted
the run, enforces the timeout, turns a cancel into TERM-then-KILL of the run's
process group and records the exit status in ``exit.json``; so a run survives
the death of its submitter and any process can re-attach to it from a saved
handle. Waiting uses Linux pidfds: no thread and no poll loop per run.
"""

from __future__ import annotations

from ._common import _children, _reap_finished

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .backend import LocalBackend
    from .config import LocalConfig
    from .handle import LocalRunHandle

__all__ = ["LocalBackend", "LocalConfig", "LocalRunHandle", "_children", "_reap_finished"]

#: Imported on first use, so that a light submodule (``_listing``, which ``tether ls``
#: uses) does not bring in the backend, its pydantic models and anyio.
_LAZY = {"LocalBackend": ".backend", "LocalConfig": ".config", "LocalRunHandle": ".handle"}

if not TYPE_CHECKING:

    def __getattr__(name: str) -> object:
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(__import__(__name__ + module, fromlist=[name]), name)
        globals()[name] = value
        return value


del TYPE_CHECKING
