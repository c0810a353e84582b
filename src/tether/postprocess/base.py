"""The postprocessor contract, the no-op one, and postprocessors found by name.

A postprocessor turns a finished run's :class:`~tether.result.RunResult` into a
report: ``process(result, **kwargs)`` returns a dict with at least ``success``
(bool) and ``message`` (str), as rompy's postprocessors do. ``process`` may be a
plain function (run in a worker thread, so it never blocks the event loop) or a
coroutine function. Third-party postprocessors register a class (or an instance)
in the ``tether.postprocessors`` entry-point group.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import anyio.to_thread

from .. import _plugins
from .._loading import quote
from ..errors import ConfigError
from ..result import RunResult


@runtime_checkable
class Postprocessor(Protocol):
    """Anything with ``process(result, **kwargs) -> dict`` (sync or async)."""

    def process(self, result: RunResult, **kwargs: Any) -> Any:
        """Work on a finished run; return at least ``{"success": bool, "message": str}``."""


class NoopPostprocessor:
    """Does nothing and succeeds: the default when no postprocessing is asked for."""

    def process(self, result: RunResult, **kwargs: Any) -> dict[str, Any]:
        """Succeed without touching the run."""
        return {"success": True, "message": "No postprocessing requested"}


def _not_a_postprocessor(obj: object) -> str | None:
    if callable(getattr(obj, "process", None)):
        return None
    return "has no process() method"


_plugins.register_check(_plugins.POSTPROCESSORS, _not_a_postprocessor)


def postprocessors() -> dict[str, Any]:
    """Every importable postprocessor: registry name → class (or instance)."""
    return dict(_plugins.discover(_plugins.POSTPROCESSORS).found)


def get_postprocessor(processor: str | Postprocessor) -> Postprocessor:
    """The postprocessor named ``processor`` (instantiated), or ``processor`` itself.

    Raises:
        ConfigError: for an unknown or broken name (the known ones are listed), or
            an object without a ``process`` method.
    """
    if not isinstance(processor, str):
        if not callable(getattr(processor, "process", None)):
            raise ConfigError(
                f"{processor_name(processor)} is not a postprocessor: it needs a "
                "process(result, **kwargs) method."
            )
        return _instance(processor, processor_name(processor))
    plugins = _plugins.discover(_plugins.POSTPROCESSORS)
    found = plugins.found.get(processor)
    if found is None:
        if processor in plugins.broken:
            raise ConfigError(
                f"Postprocessor {quote(processor)} failed to load: {plugins.broken[processor]}"
            )
        known = ", ".join(sorted(plugins.found)) or "none"
        raise ConfigError(f"Unknown postprocessor {quote(processor)}; known ones: {known}.")
    return _instance(found, processor)


def _instance(obj: Any, name: str) -> Postprocessor:
    """``obj`` itself, or an instance when it is a class (made with no arguments)."""
    if not isinstance(obj, type):
        instance: Postprocessor = obj
        return instance
    try:
        made: Postprocessor = obj()
    except TypeError as exc:
        raise ConfigError(
            f"Postprocessor {name!r} cannot be made without arguments ({exc}): "
            "pass an instance instead."
        ) from exc
    return made


def processor_name(processor: str | Postprocessor | type) -> str:
    """How reports name ``processor``: its registry name, or its class name."""
    if isinstance(processor, str):
        return processor
    return processor.__name__ if isinstance(processor, type) else type(processor).__name__


async def run_postprocessor(
    processor: str | Postprocessor, result: RunResult, kwargs: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Run ``processor`` on ``result`` and return its report, never raising for its failures.

    A sync ``process`` runs in a worker thread. An exception, or a return value
    that is not a mapping with a boolean ``success``, becomes ``{"success": False,
    "message": …}`` naming the postprocessor and what went wrong; a missing
    ``message`` is filled in. The report always carries ``processor`` (its name).
    """
    name = processor_name(processor)
    try:
        instance = get_postprocessor(processor)
        method = instance.process
        if inspect.iscoroutinefunction(method):
            raw = await method(result, **dict(kwargs or {}))
        else:
            call = functools.partial(method, result, **dict(kwargs or {}))
            raw = await anyio.to_thread.run_sync(call)
            if inspect.isawaitable(raw):  # an async callable object, say
                raw = await raw
    except anyio.get_cancelled_exc_class():
        raise
    except Exception as exc:
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
        return {
            "success": False,
            "message": f"postprocessor {name!r} raised {type(exc).__name__}: {first}".rstrip(": "),
            "processor": name,
        }
    if not isinstance(raw, Mapping) or not isinstance(raw.get("success"), bool):
        return {
            "success": False,
            "message": f"postprocessor {name!r} returned {type(raw).__name__}, not a dict "
            "with a boolean 'success' and a 'message'",
            "processor": name,
        }
    report = dict(raw)
    if not isinstance(report.get("message"), str):
        report["message"] = "succeeded" if report["success"] else "failed"
    report.setdefault("processor", name)
    return report


def check_options(processor: str, options: Mapping[str, Any]) -> Postprocessor:
    """The postprocessor named ``processor`` once ``options`` are ones it takes.

    A postprocessor whose ``process`` names its options (as ``archive`` does) refuses
    any other; one that takes only ``**kwargs`` (as ``noop`` does) takes anything.

    Raises:
        ConfigError: for an unknown postprocessor or an option it does not take.
    """
    found = get_postprocessor(processor)
    try:
        parameters = list(inspect.signature(found.process).parameters.values())[1:]
    except (TypeError, ValueError):
        return found
    named = [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if not named:
        return found
    unknown = sorted(set(options) - set(named))
    if unknown:
        raise ConfigError(
            f"Postprocessor {quote(processor)} takes no option {quote(unknown[0])}; it takes: "
            f"{', '.join(named)}."
        )
    return found
