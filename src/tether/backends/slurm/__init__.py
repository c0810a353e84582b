"""Slurm batch jobs on a real cluster: detached runs, re-attached by job id.

Each run gets a folder under ``runs_dir`` (on a file system the nodes share)
holding its batch script, stdout, stderr and outcome. The script execs tether's
run supervisor on the node, which enforces the timeout, stops the whole command
tree on a cancel (TERM, then KILL after ``cancel_grace``) and records the exit
code, signal and times in ``exit.json`` itself, so nothing depends on Slurm's
accounting (``sacct``), which many sites turn off.

All Slurm handles awaited in one event loop share one watcher: one ``squeue``
call per poll interval for every tracked job, backing off while nothing
changes, and none while nothing is tracked (see ``_watcher``). ``map_calls`` and
``Ensemble`` submit one job array for all their members.
"""

from __future__ import annotations

from .backend import SlurmBackend
from .config import SlurmConfig
from .handle import SlurmRunHandle

__all__ = ["SlurmBackend", "SlurmConfig", "SlurmRunHandle"]
