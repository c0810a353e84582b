"""The functions the tour notebook runs (``tour.ipynb``), in a module of their own.

A function defined in a notebook cell lives in ``__main__`` and has to travel by
value (cloudpickle). One defined here is importable by name: tether sends
``tour_model:peak`` and the worker process imports it, because the notebook's
folder is on the kernel's ``sys.path`` and tether sends that path along.

Every random number comes from ``numpy.random.default_rng(seed)``, so a member's
value depends only on its seed and arguments, never on where or when it runs.
"""

from __future__ import annotations

import time

import numpy as np


def peak(seed, scale, pause=0.0):
    """The largest of 1,000 normal draws times ``scale``: one Monte Carlo member.

    ``pause`` seconds of sleep stand in for real work, so that a live table has
    something to show.
    """
    time.sleep(pause)
    rng = np.random.default_rng(seed)
    return float(rng.normal(size=1000).max() * scale)


def summarise(values):
    """The mean and the largest of the members' values, rounded for display."""
    return {
        "members": len(values),
        "mean": round(float(np.mean(values)), 4),
        "max": round(float(np.max(values)), 4),
    }
