"""Entry-point discovery shared by backends, postprocessors and stores.

Built-ins are registered in tether's own ``pyproject.toml`` and found the same way
as third-party plugins. A plugin that fails to import (or is not what its group
expects) is remembered with its error and never hides the others.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

BACKENDS = "tether.backends"
POSTPROCESSORS = "tether.postprocessors"
STORES = "tether.stores"
GROUPS = (BACKENDS, POSTPROCESSORS, STORES)


@dataclass(frozen=True)
class Plugins:
    """What one entry-point group holds: loaded objects and the plugins that broke."""

    found: dict[str, Any]
    #: name → one-line reason ("ModuleNotFoundError: No module named 'x'").
    broken: dict[str, str]
    #: name → the distribution that registered it ("tether 0.1.0").
    sources: dict[str, str]


#: group → check of a loaded object; returns a complaint, or None when it is fine.
_CHECKS: dict[str, Callable[[Any], str | None]] = {}


def register_check(group: str, check: Callable[[Any], str | None]) -> None:
    """Have ``discover(group)`` reject objects that ``check`` complains about."""
    _CHECKS[group] = check
    discover.cache_clear()


@functools.cache
def discover(group: str) -> Plugins:
    """Load every entry point of ``group`` once (until :func:`reload`)."""
    found: dict[str, Any] = {}
    broken: dict[str, str] = {}
    sources: dict[str, str] = {}
    check = _CHECKS.get(group)
    for ep in entry_points(group=group):
        if ep.name in found:
            continue  # the first registration wins, as importlib.metadata orders them
        dist = getattr(ep, "dist", None)
        source = f"{dist.name} {dist.version}" if dist is not None else ep.value
        try:
            obj = ep.load()
        except Exception as exc:  # a broken plugin must not break the others
            broken[ep.name] = f"{type(exc).__name__}: {exc}".splitlines()[0]
            sources[ep.name] = source
            continue
        complaint = check(obj) if check else None
        if complaint:
            broken[ep.name] = f"{ep.value} {complaint}"
        else:
            found[ep.name] = obj
            broken.pop(ep.name, None)
        sources[ep.name] = source
    return Plugins(found, broken, sources)


def reload() -> None:
    """Forget what was discovered, so plugins installed since are found."""
    discover.cache_clear()
