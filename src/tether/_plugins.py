"""Entry-point discovery shared by backends, postprocessors and stores.

Built-ins are registered in tether's own ``pyproject.toml`` and found the same way
as third-party plugins. A plugin that fails to import (or is not what its group
expects) is remembered with its error and never hides the others.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

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


@dataclass(frozen=True)
class Plugin:
    """One name of a group: the object it loads to, or why it failed to load."""

    name: str
    #: None when the plugin failed to load (then ``broken`` says why).
    obj: Any
    broken: str | None
    #: The distribution that registered it ("tether 0.1.0").
    source: str


#: group → check of a loaded object; returns a complaint, or None when it is fine.
_CHECKS: dict[str, Callable[[Any], str | None]] = {}


def register_check(group: str, check: Callable[[Any], str | None]) -> None:
    """Have ``discover(group)`` and ``find`` reject objects that ``check`` complains about."""
    _CHECKS[group] = check
    reload()


@functools.cache
def _entry_points(group: str) -> tuple[EntryPoint, ...]:
    # Reading the installed distributions' metadata imports nothing of the plugins.
    from importlib.metadata import entry_points  # only now: it costs ~20 ms to import

    return tuple(entry_points(group=group))


def entry_point_value(group: str, name: str) -> str | None:
    """What the first registration of ``name`` points at (``"pkg.mod:attr"``), unloaded."""
    return next((ep.value for ep in _entry_points(group) if ep.name == name), None)


def names(group: str) -> list[str]:
    """The registered names of ``group``, in registration order, without loading any."""
    return list(dict.fromkeys(ep.name for ep in _entry_points(group)))


@functools.cache
def find(group: str, name: str) -> Plugin | None:
    """Load the plugin ``name`` of ``group`` alone (once, until :func:`reload`).

    None when nothing registers ``name``. The first registration that loads (and
    passes the group's check) wins, as importlib.metadata orders them.
    """
    check = _CHECKS.get(group)
    found: Plugin | None = None
    for ep in _entry_points(group):
        if ep.name != name:
            continue
        dist = getattr(ep, "dist", None)
        source = f"{dist.name} {dist.version}" if dist is not None else ep.value
        try:
            obj = ep.load()
        except Exception as exc:  # a broken plugin must not break the others
            found = Plugin(name, None, f"{type(exc).__name__}: {exc}".splitlines()[0], source)
            continue
        complaint = check(obj) if check else None
        if not complaint:
            return Plugin(name, obj, None, source)
        found = Plugin(name, None, f"{ep.value} {complaint}", source)
    return found


@functools.cache
def discover(group: str) -> Plugins:
    """Load every entry point of ``group`` once (until :func:`reload`)."""
    found: dict[str, Any] = {}
    broken: dict[str, str] = {}
    sources: dict[str, str] = {}
    for name in names(group):
        plugin = find(group, name)
        if plugin is None:
            continue
        if plugin.broken is None:
            found[name] = plugin.obj
        else:
            broken[name] = plugin.broken
        sources[name] = plugin.source
    return Plugins(found, broken, sources)


def reload() -> None:
    """Forget what was discovered, so plugins installed since are found."""
    _entry_points.cache_clear()
    find.cache_clear()
    discover.cache_clear()
