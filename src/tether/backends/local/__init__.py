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
from .backend import LocalBackend
from .config import LocalConfig
from .handle import LocalRunHandle

__all__ = ["LocalBackend", "LocalConfig", "LocalRunHandle", "_children", "_reap_finished"]
