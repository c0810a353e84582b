"""Python function calls as jobs: ``Call(fn, *args, **kwargs)``.

A :class:`Call` is a :class:`~tether.job.Job` whose work is a function call. It
names the function as ``"pkg.mod:qualname"`` (its ``target``); the function and
its arguments travel to wherever the call runs as a pickle, the *payload*, and the
return value (or the exception) comes back as a pickle, the *outcome*. Saved
handles and cache records never hold pickles: they keep the target, the payload's
SHA-256 (``digest``) and, for ensemble members, the member's seed.

Functions that cannot be imported by name in another process (defined in
``__main__``, in a notebook, a lambda, a closure) are pickled by value with
cloudpickle (``pip install 'tether[cloudpickle]'``).

Trust: unpickling runs code. A payload or outcome file is as trustworthy as
whoever could write the run folder; tether makes run folders owner-only (0700).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import os
import pickle
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import PrivateAttr, field_validator, model_validator

from . import _worker as worker
from ._integrity import trusted_bytes
from .errors import CallError, ConfigError
from .job import Job

_TARGET = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_<][\w.<>]*$")  # <lambda>, <locals>


class RemoteTraceback(Exception):
    """The traceback of an exception raised where a call ran (its ``__cause__``)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f'\n"""\n{self.text.rstrip()}\n"""'


class _Live:
    """What a Call carries only in the process that made it: function and arguments."""

    __slots__ = ("args", "call_bytes", "fn", "kwargs")

    def __init__(
        self, fn: Callable[..., Any] | None, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.call_bytes: bytes | None = None


def _target_of(fn: Callable[..., Any]) -> tuple[str, bool]:
    """``("mod:qualname", by_value)``: by value when the name would not import elsewhere."""
    try:
        return _cached_target_of(fn)
    except TypeError:  # an unhashable callable object
        return _find_target(fn)


def _find_target(fn: Callable[..., Any]) -> tuple[str, bool]:
    # A partial or a callable object is named after what it calls, and always
    # travels by value (pickled whole, with its bound arguments or state).
    inner: Any = fn.func if isinstance(fn, functools.partial) else fn
    by_value = inner is not fn
    plain = inspect.isfunction(inner) or inspect.isbuiltin(inner) or inspect.ismethod(inner)
    if not plain and not isinstance(inner, type):
        inner, by_value = type(inner), True
    module = getattr(inner, "__module__", None)
    qualname = getattr(inner, "__qualname__", None) or getattr(inner, "__name__", None)
    if not module or not qualname:
        raise ConfigError(
            f"Call target {fn!r} has no module or name: pass a function, a partial, a "
            "callable object or a 'pkg.mod:func' string."
        )
    target = f"{module}:{qualname}"
    local = by_value or module == "__main__" or "<" in qualname  # <lambda>, <locals>
    if not local:
        try:
            local = worker.resolve(target) is not fn
        except Exception:
            local = True
    return target, local


_cached_target_of = functools.lru_cache(maxsize=1024)(_find_target)


def _cloudpickle() -> Any:
    try:
        import cloudpickle  # type: ignore[import-untyped]
    except ImportError:
        raise ConfigError(
            "This call needs its function (or an argument) pickled by value, which needs "
            "cloudpickle: pip install 'tether[cloudpickle]', or move the function into an "
            "importable module."
        ) from None
    return cloudpickle


def _pickled_function(fn: Callable[..., Any], target: str) -> bytes:
    """``fn`` pickled by value: cloudpickle (functions of a script or notebook, lambdas),
    else plain pickle for a partial or callable object whose parts import by name."""
    try:
        return bytes(_cloudpickle().dumps(fn, protocol=worker.PROTOCOL))
    except ConfigError:
        if inspect.isfunction(fn):
            raise
    except Exception as exc:
        raise ConfigError(
            f"Call target {target!r} cannot be pickled ({type(exc).__name__}: {exc}): pass "
            "a function defined in a module, or a picklable callable."
        ) from exc
    try:
        return pickle.dumps(fn, protocol=worker.PROTOCOL)
    except Exception as exc:
        raise ConfigError(
            f"Call target {target!r} cannot be pickled ({exc}): pass picklable callables, or "
            "pip install 'tether[cloudpickle]'."
        ) from exc


class Call(Job):
    """A job that calls a Python function: ``Call(fn, *args, **kwargs)``.

    ``fn`` is a function, any picklable callable (a ``functools.partial``, an object
    with ``__call__``, a bound method: pickled whole) or a ``"pkg.mod:func"`` string
    (imported where the call runs, not here). Every positional and keyword argument
    goes to ``fn``; job settings (name, env, resources…) are set with
    :meth:`options`. The run's ``RunResult.value`` is the return value; an
    exception ends the run FAILED and ``await handle.result()`` re-raises it,
    chained to the remote traceback.
    """

    target: str
    by_value: bool = False
    digest: str | None = None
    seed: dict[str, Any] | None = None

    # One private attribute (pydantic's private-attribute access is slow), no factory.
    _live: _Live | None = PrivateAttr(None)

    def __init__(self, fn: Callable[..., Any] | str | None = None, /, *args: Any, **kwargs: Any):
        if fn is None and not args:
            # Field form: pydantic validation and records (``Call(target=…, name=…)``).
            super().__init__(**kwargs)
            return
        if isinstance(fn, str):
            target, by_value, name = fn, False, fn.rpartition(":")[2].rpartition(".")[2]
        elif callable(fn):
            target, by_value = _target_of(fn)
            name = target.rpartition(":")[2].rpartition(".")[2]
        else:
            raise ConfigError(
                f"Call needs a function or a 'pkg.mod:func' string, not {type(fn).__name__}."
            )
        fields = {"target": target, "by_value": by_value, "name": name.strip("<>") or "call"}
        super().__init__(**fields)
        self._live = _Live(fn if callable(fn) else None, args, kwargs)

    @field_validator("target")
    @classmethod
    def _target(cls, target: str) -> str:
        if not _TARGET.match(target):
            raise ValueError(
                f"call target {target!r} must look like 'pkg.module:function' "
                "(module path, a colon, the function's name)"
            )
        return target

    @model_validator(mode="after")
    def _no_command(self) -> Call:
        if self.command is not None:
            raise ValueError("a Call runs its function: it takes no command")
        return self

    # -- what to call -----------------------------------------------------------------

    @property
    def function(self) -> Callable[..., Any]:
        """The function to call (imported from ``target`` when given by name)."""
        live = self._require_live()
        if live.fn is None:
            try:
                live.fn = worker.resolve(self.target)
            except Exception as exc:
                raise ConfigError(
                    f"Cannot import call target {self.target!r}: {type(exc).__name__}: {exc}"
                ) from exc
        return live.fn

    @property
    def has_arguments(self) -> bool:
        """False for a Call rebuilt from a record: its arguments stay in the run folder."""
        return self._live is not None

    @property
    def args(self) -> tuple[Any, ...]:
        """Positional arguments for the function."""
        return self._require_live().args

    @property
    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments for the function."""
        return self._require_live().kwargs

    def _require_live(self) -> _Live:
        live = self._live
        if live is None:
            raise ConfigError(
                f"Call {self.target!r} was rebuilt from a saved record and has no arguments: "
                "submit the original Call object instead."
            )
        return live

    def options(self, **settings: Any) -> Call:
        """A copy with job settings changed: ``name``, ``env``, ``resources``, ``workdir``…"""
        if "target" in settings or "command" in settings:
            raise ConfigError("options() changes job settings; make a new Call to change what runs")
        data = {**self.model_dump(exclude={"digest"}), **settings}
        try:
            copy = type(self).model_validate(data)
        except ValueError as exc:
            raise ConfigError(f"Invalid Call options: {exc}") from None
        copy._live = self._live
        return copy

    def with_arguments(self, *args: Any, **kwargs: Any) -> Call:
        """A copy that calls the same function with other arguments (settings kept)."""
        live = self._require_live()
        copy = self.model_copy(update={"digest": None})
        copy._live = _Live(live.fn, args, kwargs)
        return copy

    def with_seed(self, seed: dict[str, Any]) -> Call:
        """A copy marked as an ensemble member (``seed`` is its JSON identity)."""
        copy = self.model_copy(update={"seed": seed})
        copy._live = self._live
        return copy

    # -- pickles ----------------------------------------------------------------------

    def _call_pickle(self) -> bytes:
        """The pickled (function, arguments): the call's identity and its payload's core."""
        live = self._require_live()
        if live.call_bytes is None:
            data: dict[str, Any] = {
                "target": self.target,
                "fn": None,
                "args": live.args,
                # Sorted: the order keywords are given in never changes the call.
                "kwargs": dict(sorted(live.kwargs.items())),
            }
            if self.by_value:
                data["fn"] = _pickled_function(self.function, self.target)
            try:
                live.call_bytes = pickle.dumps(data, protocol=worker.PROTOCOL)
            except (pickle.PicklingError, TypeError, AttributeError) as exc:
                try:
                    live.call_bytes = _cloudpickle().dumps(data, protocol=worker.PROTOCOL)
                except ConfigError:
                    raise ConfigError(
                        f"Call {self.target!r}: its arguments cannot be pickled ({exc}); "
                        "pass picklable values or pip install 'tether[cloudpickle]'."
                    ) from exc
                except Exception as again:
                    raise ConfigError(
                        f"Call {self.target!r}: its arguments cannot be pickled "
                        f"({type(again).__name__}: {again})."
                    ) from again
        return live.call_bytes

    def payload_digest(self) -> str:
        """SHA-256 of the pickled function and arguments (the recorded one after a reload)."""
        if self._live is None and self.digest is not None:
            return self.digest
        return hashlib.sha256(self._call_pickle()).hexdigest()

    def payload(self) -> bytes:
        """What a worker needs to make the call: the call pickle and this sys.path.

        The submitter's ``sys.path`` travels along, so a function importable here
        (from the script's folder, say) is importable in the worker too.
        """
        # '' (python -c, the REPL) means the submitter's folder, not the worker's.
        path = [entry or os.getcwd() for entry in sys.path]
        data = {"call": self._call_pickle(), "sys_path": path}
        return pickle.dumps(data, protocol=worker.PROTOCOL)

    def to_record(self) -> dict[str, Any]:
        """The job record with the payload digest (never the payload itself)."""
        data = super().to_record()
        try:
            digest = self.payload_digest() if self._live is not None else self.digest
        except ConfigError:  # arguments that cannot be pickled (fine in threads mode)
            digest = None
        if digest is not None:
            data["digest"] = digest
        return data


def decode_outcome(data: bytes | dict[str, Any]) -> dict[str, Any]:
    """The parts of a ``RunResult`` an outcome (pickled or loaded) gives.

    Returns keys ``ok``, ``value``, ``exception``, ``traceback``, ``error`` and
    ``exit_code`` (the latter None unless the call called ``sys.exit``).
    """
    outcome = pickle.loads(data) if isinstance(data, bytes) else data
    if outcome["ok"]:
        return {
            "ok": True,
            "value": outcome.get("value"),
            "exception": None,
            "traceback": None,
            "error": None,
            "exit_code": 0,
        }
    text = outcome.get("traceback") or ""
    exception: BaseException | None = None
    if outcome.get("exception") is not None:
        try:
            exception = pickle.loads(outcome["exception"])
        except Exception:
            exception = None
    if exception is None and outcome.get("exit_code") is None:
        exception = CallError(outcome["type"], outcome["message"])
    if exception is not None and text:
        exception.__cause__ = RemoteTraceback(text)
    short = outcome["type"].removeprefix("builtins.")
    where = {"load": "could not load the call: ", "result": ""}.get(outcome.get("where", ""), "")
    error = f"{where}{short}: {outcome['message']}" if outcome["message"] else f"{where}{short}"
    if outcome.get("exit_code") is not None:
        error = f"the call exited with code {outcome['exit_code']}"
        if outcome["message"] and not outcome["message"].startswith("exit code"):
            error += f": {outcome['message']}"
    return {
        "ok": False,
        "value": None,
        "exception": exception,
        "traceback": text or None,
        "error": error,
        "exit_code": outcome.get("exit_code"),
    }


def outcome_fields(path: Path) -> dict[str, Any]:
    """``decode_outcome`` of an outcome file, without ``exit_code``; {} when there is none.

    A run whose worker died before writing its outcome has no file: the caller
    then reports the exit status like any command's.
    """
    if not path.exists() and not path.is_symlink():
        return {}
    # A record named this folder: unpickle only what is proven tether's own.
    data = trusted_bytes(path)
    if isinstance(data, str):
        return {"ok": False, "error": f"the call's outcome was not read: {data}"}
    try:
        fields = decode_outcome(data)
    except Exception as exc:  # a corrupt or foreign pickle: say so, do not crash
        return {"ok": False, "error": f"the call's outcome file cannot be read: {exc}"}
    fields.pop("exit_code")
    return fields


def call_argv() -> list[str]:
    """The command that runs a staged call: this Python, the worker by its file path.

    ``-P`` keeps the worker's own folder off ``sys.path`` (it is tether's package
    folder); the payload brings the submitter's ``sys.path`` instead.
    """
    return [sys.executable, "-P", worker.__file__]


def encode_outcome(ok: bool, value: Any, exception: BaseException | None, tb: str | None) -> bytes:
    """An outcome pickle from a result's parts (to keep a Call's value in the cache)."""
    if ok:
        return worker.dump_outcome({"ok": True, "value": value})
    failure = worker._failure(exception or RuntimeError("the call failed"), "call")
    failure["traceback"] = tb or ""
    return worker.dump_outcome(failure)


def refuse_calls(job: Job, backend: str) -> None:
    """Raise ConfigError for a Call on a backend that runs commands only."""
    if isinstance(job, Call):
        raise ConfigError(
            f"The {backend} backend runs command jobs, not Call {job.name!r}: run it with "
            "InlineConfig or LocalConfig (or wrap the work in a command)."
        )
