"""Docker containers on a Docker engine, through aiodocker: detached, resumable runs.

Each run gets a run folder on this machine, bind-mounted into its container, and a
container labelled ``tether.run_id`` / ``tether.version`` / ``tether.run_dir``.
The container is never auto-removed: whoever first sees it end (a waiting handle,
a ``refresh`` after a re-attach, ``cancel``, or ``tether docker prune``) copies its
stdout and stderr into the run folder, records ``exit.json`` (first writer wins),
and only then removes it, so the exit code and the logs are never lost.

The engine has no run timeout of its own: each run's detached watchdog
(``_watchdog``) stops the container at the deadline and records its end with
nobody attached. Before touching a container a record names, the handle proves it
carries that run's labels.
"""

from __future__ import annotations

from .backend import DockerBackend, PrunedContainer
from .config import LABEL_RUN_DIR, LABEL_RUN_ID, LABEL_VERSION, DockerConfig
from .handle import DockerRunHandle

__all__ = [
    "LABEL_RUN_DIR",
    "LABEL_RUN_ID",
    "LABEL_VERSION",
    "DockerBackend",
    "DockerConfig",
    "DockerRunHandle",
    "PrunedContainer",
]
