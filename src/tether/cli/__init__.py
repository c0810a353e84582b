"""The ``tether`` command line: run jobs and manage saved run handles.

``tether run JOB.yml`` submits a job and waits for it; ``submit``, ``status``,
``wait``, ``cancel`` and ``logs`` work on a saved handle file. ``tether --help``
lists the exit statuses.
"""

from __future__ import annotations

from .main import main

__all__ = ["main"]
