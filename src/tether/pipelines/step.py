"""Pipeline steps: a job on a backend (or a postprocessor), fanned out or not.

A :class:`Step` is a definition, never a run: the runner turns it into one run per
member (one member, or one per parameter set or ensemble seed). Its *digest*
identifies the definition, so a resumed pipeline knows which recorded steps still
stand. :class:`Ref` placeholders in a Call's arguments stand for an upstream
step's value, outputs or result and are filled in when the step starts.
"""

from __future__ import annotations

import hashlib
import inspect
import itertools
import json
import pickle
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ValidationError

from .._arguments import backend_argument
from .._loading import quote
from ..backend import Backend
from ..call import Call
from ..config import BackendConfig
from ..errors import ConfigError
from ..job import Job
from ..postprocess.base import Postprocessor, processor_name
from ..retry.policy import RetryPolicy

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

Params = Mapping[str, Any]


@dataclass(frozen=True)
class Ref:
    """An upstream step's ``value``, ``outputs`` or ``result``, filled in at its start.

    For a step with one member it is that member's value (or list of output
    paths, or ``RunResult``); for a fanned-out step, a list in member order
    (outputs: every member's paths, in member order).
    """

    step: str
    what: Literal["value", "outputs", "result"] = "value"


def refs_in(obj: Any) -> Iterator[Ref]:
    """Every :class:`Ref` in ``obj``, looking into lists, tuples, sets and dict values."""
    if isinstance(obj, Ref):
        yield obj
    elif isinstance(obj, list | tuple | set | frozenset):
        for item in obj:
            yield from refs_in(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from refs_in(item)


def fill_refs(obj: Any, value_of: Callable[[Ref], Any]) -> Any:
    """``obj`` with each :class:`Ref` replaced by ``value_of(ref)`` (containers rebuilt)."""
    if isinstance(obj, Ref):
        return value_of(obj)
    if isinstance(obj, list):
        return [fill_refs(item, value_of) for item in obj]
    if isinstance(obj, tuple):
        return tuple(fill_refs(item, value_of) for item in obj)
    if isinstance(obj, set | frozenset):
        return type(obj)(fill_refs(item, value_of) for item in obj)
    if isinstance(obj, dict):
        return {key: fill_refs(item, value_of) for key, item in obj.items()}
    return obj


def expand_over(over: Sequence[Params] | Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Parameter sets from a list of mappings, or the product of a mapping of lists."""
    if isinstance(over, Mapping):
        keys = list(over)
        for key in keys:
            values = over[key]
            if isinstance(values, str | bytes) or not isinstance(values, Sequence) or not values:
                raise ConfigError(
                    f"over: {quote(key)} must be a non-empty list of values (a mapping of "
                    "lists fans out over every combination)"
                )
        return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*over.values())]
    if isinstance(over, str | bytes) or not isinstance(over, Sequence):
        raise ConfigError("over must be a list of parameter mappings or a mapping of lists")
    sets = []
    for index, params in enumerate(over):
        if not isinstance(params, Mapping):
            raise ConfigError(f"over[{index}] must be a mapping of parameters, not {params!r}")
        sets.append(dict(params))
    if not sets:
        raise ConfigError("over must hold at least one parameter set")
    return sets


def _names(items: Sequence[str | Step] | str | Step, what: str, step: str) -> tuple[str, ...]:
    if isinstance(items, str | Step):
        items = [items]  # one name given without a list
    names = []
    for item in items:
        name = item.name if isinstance(item, Step) else item
        if not isinstance(name, str):
            raise ConfigError(f"step {step!r}: {what} must name steps, not {item!r}")
        names.append(name)
    return tuple(dict.fromkeys(names))


def _format(text: str, params: Params, step: str) -> str:
    try:
        return text.format_map(params)
    except (KeyError, IndexError) as exc:
        raise ConfigError(
            f"step {step!r}: the command uses {{{exc.args[0]}}}, which no parameter of "
            f"'over' gives (parameters: {', '.join(params) or 'none'}); write {{{{ and }}}} "
            "for literal braces"
        ) from None
    except ValueError as exc:
        raise ConfigError(f"step {step!r}: cannot fill the command's placeholders: {exc}") from None


def _with_params(job: Job, params: Params, step: str) -> Job:
    """One member of a fan-out: a Call gets ``params`` as keyword arguments, a command
    job gets them filled into its ``{placeholders}``."""
    if isinstance(job, Call):
        return job.with_arguments(*job.args, **{**job.kwargs, **params})
    command = job.command
    if command is None:
        raise ConfigError(f"step {step!r}: 'over' needs a command with {{placeholders}} to fill")
    if isinstance(command, str):
        filled: str | list[str] = _format(command, params, step)
    else:
        filled = [_format(part, params, step) for part in command]
    return job.model_copy(update={"command": filled})


class Step:
    """One node of a pipeline: ``job`` on ``backend``, then ``processor`` on its results.

    Args:
        name: unique within the pipeline; letters, digits, ``_.-`` (it prefixes run ids).
        job: a :class:`~tether.job.Job` or :class:`~tether.call.Call`; None makes a
            postprocessing step, which runs ``processor`` on the results of the
            steps it depends on.
        backend: where the job runs (default: the pipeline's backend).
        cache: wrap the backend in the cache (True, or a mapping of
            :class:`~tether.cache.CachedConfig` options such as ``store_path``).
        depends_on: steps that must succeed first.
        inputs_from: steps whose output files are staged into this step's runs
            (implies ``depends_on``).
        processor: postprocessor name (``tether.postprocessors``) or object.
        process_kwargs: keyword options for the processor.
        over: fan out, one run per parameter set: a list of mappings, or a mapping
            of lists (every combination). A Call gets the parameters as keyword
            arguments; a command gets them in its ``{placeholders}``.
        retry: run each member again after a passing failure: a
            :class:`~tether.retry.RetryPolicy`, its options as a mapping, or a number
            of retries. A resumed pipeline carries on with the attempt it was at.
    """

    def __init__(
        self,
        name: str,
        job: Job | None = None,
        *,
        backend: Backend[Any] | BackendConfig | str | None = None,
        cache: bool | Mapping[str, Any] = False,
        depends_on: Sequence[str | Step] | str | Step = (),
        inputs_from: Sequence[str | Step] | str | Step = (),
        processor: str | Postprocessor | None = None,
        process_kwargs: Mapping[str, Any] | None = None,
        over: Sequence[Params] | Mapping[str, Sequence[Any]] | None = None,
        retry: RetryPolicy | Mapping[str, Any] | int | None = None,
    ) -> None:
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(
                f"step name {name!r} must be 1-64 letters, digits, '_', '.' or '-' "
                "(starting with a letter or digit)"
            )
        self.name = name
        self.job = job
        self.backend = _backend(backend, name)
        self.cache: bool | dict[str, Any] = dict(cache) if isinstance(cache, Mapping) else cache
        self.depends_on = _names(depends_on, "depends_on", name)
        self.inputs_from = _names(inputs_from, "inputs_from", name)
        self.processor = processor
        self.process_kwargs = dict(process_kwargs or {})
        self.retry = _retry_policy(retry, name)
        self.params: list[dict[str, Any]] | None = None
        self._ensemble: dict[str, Any] | None = None
        self._members: list[Job] | None = None
        if job is not None and not isinstance(job, Job):
            raise ConfigError(f"step {name!r}: job must be a Job or a Call, not {job!r}")
        if job is None and self.retry is not None:
            raise ConfigError(f"step {name!r}: 'retry' reruns a job; this step has none")
        if job is None:
            if processor is None:
                raise ConfigError(f"step {name!r} needs a job, or a processor to postprocess with")
            if not self.depends_on and not self.inputs_from:
                raise ConfigError(
                    f"step {name!r} postprocesses other steps' runs: give it depends_on"
                )
            if over is not None:
                raise ConfigError(f"step {name!r}: 'over' fans out a job; this step has none")
        elif isinstance(job, Call) and not job.has_arguments:
            raise ConfigError(
                f"step {name!r}: its Call was rebuilt from a record and has no arguments"
            )
        if over is not None:
            assert job is not None
            self.params = expand_over(over)
            self._members = [_with_params(job, params, name) for params in self.params]
        if (
            processor is not None
            and not isinstance(processor, str)
            and not callable(getattr(processor, "process", None))
        ):
            raise ConfigError(
                f"step {name!r}: processor {processor!r} has no process(result, **kwargs)"
            )

    @classmethod
    def ensemble(
        cls,
        name: str,
        fn: Callable[..., Any] | str,
        n: int,
        seed: int,
        *,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        seed_as: Literal["sequence", "int"] = "sequence",
        **options: Any,
    ) -> Step:
        """A step of ``n`` calls ``fn(seed_i, *args, **kwargs)``, seeds as in
        :class:`~tether.ensemble.Ensemble`. ``seed`` is required: a resumed
        pipeline must give the same members."""
        from ..ensemble import Ensemble

        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(
                f"step {name!r}: a pipeline ensemble needs a fixed int seed (got {seed!r}), "
                "so that a resumed pipeline runs the same members"
            )
        if "over" in options:
            raise ConfigError(f"step {name!r}: an ensemble fans out over seeds; drop 'over'")
        members = Ensemble(fn, n, seed, args=args, kwargs=dict(kwargs or {}), seed_as=seed_as)
        calls = members.calls()
        step = cls(name, calls[0], **options)
        step._members = list(calls)
        step._ensemble = {"n": n, "seed": seed, "seed_as": seed_as}
        return step

    # -- what the runner needs ----------------------------------------------------------

    @property
    def value(self) -> Ref:
        """This step's return value(s), for a later Call's arguments."""
        return Ref(self.name, "value")

    @property
    def outputs(self) -> Ref:
        """This step's output files (paths), for a later Call's arguments."""
        return Ref(self.name, "outputs")

    @property
    def result(self) -> Ref:
        """This step's ``RunResult`` (or list of them), for a later Call's arguments."""
        return Ref(self.name, "result")

    @property
    def fanned_out(self) -> bool:
        """True when the step has several members (``over`` or an ensemble)."""
        return self._members is not None

    def members(self) -> list[Job]:
        """The jobs this step runs: one, or one per parameter set or seed."""
        if self.job is None:
            return []
        return list(self._members) if self._members is not None else [self.job]

    def upstream(self) -> tuple[str, ...]:
        """Every step this one waits for: depends_on, inputs_from and referenced steps."""
        names = [*self.depends_on, *self.inputs_from]
        for job in self._members if self._members is not None else (self.job,):
            if isinstance(job, Call):
                names += [ref.step for ref in refs_in((job.args, job.kwargs))]
        return tuple(dict.fromkeys(names))

    def digest(self, backend_fields: dict[str, Any] | str) -> str:
        """SHA-256 of the definition: members, backend settings, processor, wiring.

        ``backend_fields`` may come encoded already (:func:`encode_fields`), so that
        steps sharing a backend do not each encode its settings again; the digest is
        the same either way.
        """
        fields = backend_fields
        if not isinstance(fields, str):
            fields = encode_fields(fields)
        definition = {
            "members": [_job_identity(job) for job in self.members()],
            "cache": self.cache,
            "processor": None if self.processor is None else processor_name(self.processor),
            "process_kwargs": _canonical(self.process_kwargs),
            "depends_on": sorted(self.depends_on),
            "inputs_from": list(self.inputs_from),
            "ensemble": self._ensemble,
        }
        # What json.dumps({"backend": fields, **definition}, sort_keys=True) gives:
        # "backend" sorts before every other key.
        text = '{"backend": ' + fields + ", " + encode_fields(definition)[1:]
        return hashlib.sha256(text.encode()).hexdigest()

    def __repr__(self) -> str:
        what = "postprocess" if self.job is None else type(self.job).__name__
        count = f" x{len(self.members())}" if self.fanned_out else ""
        return f"Step({self.name!r}, {what}{count})"


def encode_fields(value: Any) -> str:
    """``value`` as the step digest encodes it (sorted keys, ``repr`` for the rest).

    That is ``json.dumps(value, sort_keys=True, default=repr)``; with the C encoder
    at hand it is called directly, which spares a large pipeline the building of an
    encoder for each step (the tests check the two agree).
    """
    if _c_encoder is None:
        return json.dumps(value, sort_keys=True, default=repr)
    # What JSONEncoder(sort_keys=True, default=repr).encode(value) makes, from its
    # defaults: circular checks (a fresh memo), ASCII output, NaN allowed.
    if isinstance(value, str):
        return _encode_ascii(value)
    return _c_encode(_c_encoder, value)


def _c_encode(make: Any, value: Any) -> str:
    encoder = make({}, repr, _encode_ascii, None, ": ", ", ", True, False, True)
    return "".join(encoder(value, 0))


def _probe_c_encoder() -> Any:
    """The C encoder, when calling it directly gives what ``json.dumps`` gives here."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return None
    sample = {"b": [1.5, None, True, "é"], "a": {"z": 1, "y": float("nan")}, "c": object}
    try:
        text = _c_encode(make, sample)
    except Exception:  # another signature: keep to json.dumps
        return None
    return make if text == json.dumps(sample, sort_keys=True, default=repr) else None


_encode_ascii: Callable[[str], str] = json.encoder.encode_basestring_ascii
_c_encoder = _probe_c_encoder()


def _job_identity(job: Job) -> dict[str, Any]:
    """What decides a member's run, stable across processes (unlike a cloudpickle)."""
    record = job.to_record()
    if not isinstance(job, Call):
        return record
    record.pop("digest", None)
    arguments = _canonical((job.args, dict(sorted(job.kwargs.items()))))
    try:
        record["arguments"] = hashlib.sha256(pickle.dumps(arguments, protocol=4)).hexdigest()
    except Exception:  # unpicklable arguments: their repr is the best identity left
        record["arguments"] = repr(arguments)
    if job.by_value:
        record["function"] = _function_identity(job.function)
    return record


def _canonical(obj: Any) -> Any:
    """``obj`` with sets as sorted lists: set order follows string hashes, which change
    with every interpreter (``PYTHONHASHSEED``), and a digest must not."""
    if isinstance(obj, set | frozenset):
        items = [_canonical(item) for item in obj]
        return ("<set>", sorted(items, key=repr))
    if isinstance(obj, list | tuple):
        return type(obj)(_canonical(item) for item in obj) if type(obj) in (list, tuple) else obj
    if isinstance(obj, dict):
        return {key: _canonical(value) for key, value in obj.items()}
    return obj


def _retry_policy(retry: Any, step: str) -> RetryPolicy | None:
    """A policy from a policy, a mapping of its options, or a number of retries."""
    if retry is None or isinstance(retry, RetryPolicy):
        return retry
    if isinstance(retry, bool) or not isinstance(retry, int | Mapping):
        raise ConfigError(
            f"step {step!r}: retry must be a RetryPolicy, a mapping of its options or a "
            f"number of retries, not {retry!r}"
        )
    try:
        if isinstance(retry, int):
            return RetryPolicy(retries=retry)
        return RetryPolicy.model_validate(dict(retry))
    except ValidationError as exc:
        detail = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'retry'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"step {step!r}: invalid retry policy: {detail}") from None


def _backend(backend: Any, step: str) -> Backend[Any] | BackendConfig | None:
    """A backend, a config, or a config made from a backend type name."""
    return backend_argument(backend, f"step {step!r}")


def _function_identity(fn: Callable[..., Any]) -> str:
    """A function defined in a script or notebook: its source text, else its bytecode;
    a partial or callable object: its pickle (stable when its parts import by name)."""
    if not inspect.isfunction(fn):
        try:
            return hashlib.sha256(pickle.dumps(fn, protocol=4)).hexdigest()
        except Exception:
            pass
    try:
        source = inspect.getsource(fn)
    except (OSError, TypeError):
        code = getattr(fn, "__code__", None)
        source = repr((code.co_code, code.co_consts)) if code is not None else repr(fn)
    return hashlib.sha256(source.encode()).hexdigest()
