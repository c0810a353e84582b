"""Which backends exist, what they can do, whether they work here, and which to use.

``list_backends`` is tether's answer to pycwt-mod's ``list_backends`` and
``print_backend_info``; ``recommended_backend`` to its ``get_recommended_backend``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from . import _plugins
from .capabilities import Availability
from .config import BackendConfig
from .errors import BackendUnavailableError
from .job import Job, parse_memory


@dataclass(frozen=True)
class BackendInfo:
    """One registered backend: its name, config class, capabilities and availability.

    ``config_class`` is None for a plugin that failed to load; ``error`` then says
    why. ``availability`` is None unless it was asked for.
    """

    name: str
    config_class: type[BackendConfig] | None
    capabilities: frozenset[str]
    source: str
    availability: Availability | None = None
    error: str | None = None

    @property
    def usable(self) -> bool:
        """Loaded and, when checked, usable here."""
        return self.error is None and (self.availability is None or self.availability.usable)

    @property
    def reason(self) -> str:
        """Why it is not usable ("" when it is, or was not checked)."""
        if self.error is not None:
            return f"plugin failed to load: {self.error}"
        return self.availability.reason if self.availability is not None else ""

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready summary, as ``tether backends list --json`` prints it."""
        cls = self.config_class
        return {
            "name": self.name,
            "config_class": f"{cls.__module__}.{cls.__qualname__}" if cls else None,
            "capabilities": sorted(self.capabilities),
            "source": self.source,
            "usable": None if self.availability is None and self.error is None else self.usable,
            "reason": self.reason,
        }


def _checked(cls: type[BackendConfig]) -> Availability:
    try:
        return cls.availability()
    except Exception as exc:  # a plugin's broken check must not break the listing
        return Availability(False, f"availability check failed: {type(exc).__name__}: {exc}")


def _detected(cls: type[BackendConfig]) -> frozenset[str]:
    try:
        return cls.detected_capabilities()
    except Exception:  # a plugin's broken check: what it declares
        return cls.capabilities


def list_backends(available_only: bool = False, *, check: bool | None = None) -> list[BackendInfo]:
    """Every registered backend, built-in or plugin, sorted by name.

    Args:
        available_only: keep only the backends usable on this machine (implies
            ``check``); plugins that failed to load are left out too.
        check: ask each backend whether it is usable here (``availability``); this
            may take a moment (a service ping), so it is off by default.

    Plugins that failed to import are listed with ``error`` set, so that a typo in a
    plugin's ``pyproject.toml`` is visible rather than silently missing.
    """
    check = available_only if check is None else check
    plugins = _plugins.discover(_plugins.BACKENDS)
    infos = []
    for name in sorted({*plugins.found, *plugins.broken}):
        source = plugins.sources.get(name, "")
        if name in plugins.broken:
            if not available_only:
                infos.append(
                    BackendInfo(name, None, frozenset(), source, error=plugins.broken[name])
                )
            continue
        cls: type[BackendConfig] = plugins.found[name]
        availability = _checked(cls) if check else None
        if available_only and availability is not None and not availability.usable:
            continue
        capabilities = cls.capabilities
        if availability is not None and availability.usable:
            capabilities = _detected(cls)
        infos.append(BackendInfo(name, cls, capabilities, source, availability))
    return infos


@dataclass(frozen=True)
class Recommendation:
    """The backend ``recommended_backend`` picked, and why."""

    name: str
    config_class: type[BackendConfig]
    reason: str


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _too_big_for_here(job: Job) -> str | None:
    """Why this machine cannot hold the job's resources, or None when it can."""
    resources = job.resources
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if resources.cpus and cores and resources.cpus > cores:
        return f"the job asks for {resources.cpus} CPUs and this machine has {cores}"
    total = _memory_bytes()
    if resources.memory and total and parse_memory(resources.memory) > total:
        return (
            f"the job asks for {resources.memory} of memory and this machine has "
            f"{total / 1024**3:.1f} GiB"
        )
    return None


def required_capabilities(job: Job) -> frozenset[str]:
    """The capabilities a backend needs to run ``job`` at all."""
    from .call import Call

    needs = {"calls" if isinstance(job, Call) else "commands"}
    if job.resources.gpus:
        needs.add("gpus")
    return frozenset(needs)


def recommended_backend(job: Job) -> Recommendation:
    """The best backend usable here for ``job``, and the reason for the choice.

    Candidates are the usable backends with every capability the job needs
    (``required_capabilities``), never simulated ones. When the job fits this
    machine, backends that run here win, in the order of their config class's
    ``preference`` (local first); when it does not (more CPUs or memory than this
    machine has), backends with the ``cluster`` capability win.

    Raises:
        BackendUnavailableError: when no usable backend can run the job; the
            message says why each one was rejected.
    """
    needs = required_capabilities(job)
    too_big = _too_big_for_here(job)
    rejected: list[str] = []
    candidates: list[BackendInfo] = []
    for info in list_backends(check=True):
        if info.config_class is None or not info.usable:
            rejected.append(f"{info.name}: {info.reason}")
        elif "simulated" in info.capabilities:
            rejected.append(f"{info.name}: simulated runs only, never recommended")
        elif not needs <= info.capabilities:
            missing = ", ".join(sorted(needs - info.capabilities))
            rejected.append(f"{info.name}: cannot provide {missing}")
        else:
            candidates.append(info)
    if not candidates:
        why = "; ".join(rejected) or "no backends are registered"
        raise BackendUnavailableError(f"No usable backend can run job {job.name!r}: {why}.")

    def rank(info: BackendInfo) -> tuple[int, int, str]:
        assert info.config_class is not None
        elsewhere = "cluster" in info.capabilities
        # Runs here are cheaper to start and debug; a job too big for here needs a cluster.
        placement = int(elsewhere) if too_big is None else int(not elsewhere)
        return (placement, info.config_class.preference, info.name)

    best = min(candidates, key=rank)
    assert best.config_class is not None
    reason = f"'{best.name}' is usable here and provides what the job needs"
    reason += f" ({', '.join(sorted(needs))})"
    kinds = {"detached": "detached", "reattach": "re-attachable", "cancel": "cancellable"}
    features = [word for cap, word in kinds.items() if cap in best.capabilities]
    if features:
        reason += f"; its runs are {', '.join(features)}"
    if too_big is not None:
        if "cluster" in best.capabilities:
            reason += f"; it runs on a cluster, and {too_big}"
        else:
            reason += f"; no cluster backend is usable, although {too_big}"
    others = [info.name for info in candidates if info is not best]
    if others:
        reason += f"; also usable: {', '.join(others)}"
    return Recommendation(best.name, best.config_class, reason)
