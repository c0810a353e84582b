"""``RetryingBackend``: any backend, with runs that ended for a passing reason run again.

The wrapper decorates a backend as the cache does (:mod:`tether.cache.backend`): a
:class:`RetryConfig` names the inner backend's config and the policy, loads from
YAML (``type: retry``) and creates the wrapper; a submit returns one
:class:`~tether.retry.handle.RetryRunHandle` for all the attempts.

With a cache, the cache goes *inside*: ``RetryingBackend(CachedBackend(inner))``.
Each attempt is then a cache submission: a recorded success is a hit at once, and
a failed attempt is never recorded, so it is never a hit (a cache that records
failures is refused here: every retry would be the recorded failure again). The
other way round is refused when it submits (see :meth:`RetryingBackend.cache_fields`).
"""

from __future__ import annotations

import builtins
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    ConfigDict,
    Field,
    SecretStr,
    SerializeAsAny,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from .._files import default_runs_dir
from .._runs import chosen_run_id, make_run_dir
from ..backend import Backend
from ..config import FROM_RECORD, BackendConfig
from ..errors import ConfigError, RecordError
from ..job import Job
from ..records import write_record
from ._state import Attempt, RetryState, write_state
from .handle import RetryRunHandle, needs_secrets
from .policy import RetryPolicy

#: The inner config in the schema: any backend's config, told apart by its ``type``.
_INNER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type"],
    "properties": {"type": {"type": "string", "description": "The inner backend's type."}},
    "additionalProperties": True,
}


class RetryConfig(BackendConfig, RetryPolicy):
    """Settings of a retrying backend: the inner backend's config and the retry policy.

    The policy fields (``retries``, ``backoff``, ``retry_on``, ``exit_codes``) are
    :class:`~tether.retry.policy.RetryPolicy`'s; :attr:`policy` gives them as one.
    """

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"type": "retry", "backend": {"type": "local"}, "retries": 3},
                {
                    "type": "retry",
                    "backend": {"type": "slurm", "partition": "short"},
                    "retries": 2,
                    "retry_on": ["LOST", "TIMED_OUT", "FAILED"],
                    "exit_codes": [143],
                    "backoff": {"initial": 30, "factor": 2, "max": 600},
                },
            ]
        }
    )

    type: Literal["retry"] = Field(
        "retry", description="Selects the retrying wrapper in config files.", examples=["retry"]
    )
    backend: Annotated[SerializeAsAny[BackendConfig], WithJsonSchema(_INNER_SCHEMA)] = Field(
        description="The inner backend's config, with its own 'type'; it runs every attempt.",
        examples=[{"type": "local"}],
    )
    runs_dir: Path | None = Field(
        None,
        description="Where retried runs keep their shared state folder; default the inner "
        "backend's runs_dir, else $TETHER_HOME/runs.",
        examples=["~/tether-runs"],
    )

    timeout: int = Field(
        3600,
        ge=60,
        le=86400,
        description="Not used by the wrapper: set the timeout (per attempt) in 'backend'.",
        examples=[3600],
    )
    env_vars: dict[str, str | SecretStr] = Field(
        default_factory=dict,
        description="Not used by the wrapper: set environment variables in 'backend'.",
        examples=[{}],
    )
    working_dir: Path | None = Field(
        None,
        description="Not used by the wrapper: set working_dir in 'backend'.",
        examples=[None],
    )

    preference: ClassVar[int] = 900  # a wrapper: never recommended on its own
    cache_ignore: ClassVar[frozenset[str]] = frozenset({"timeout", "runs_dir"})

    @model_validator(mode="after")
    def _settings_belong_inside(self) -> RetryConfig:
        defaults = type(self).model_fields
        moved = [
            f
            for f in ("timeout", "env_vars", "working_dir")
            if f in self.model_fields_set
            and getattr(self, f) != defaults[f].get_default(call_default_factory=True)
        ]
        if moved:
            raise ValueError(
                f"{', '.join(moved)} of a retrying backend go inside 'backend' (the wrapper "
                "runs nothing itself)"
            )
        return self

    @field_validator("backend", mode="before")
    @classmethod
    def _inner(cls, value: Any, info: ValidationInfo) -> Any:
        if not isinstance(value, BackendConfig):
            if not isinstance(value, dict) or "type" not in value:
                raise ValueError("backend must be a mapping with the inner backend's 'type'")
            from ..registry import config_class

            inner = config_class(str(value["type"]))
            if (info.context or {}).get(FROM_RECORD):
                value = inner.from_record(value)
            else:
                value = inner.model_validate(value)
        refusal = _refused_inner(value)
        if refusal:
            raise ValueError(refusal)
        return value

    @property
    def policy(self) -> RetryPolicy:
        """The retry policy these settings give."""
        return RetryPolicy(
            retries=self.retries,
            backoff=self.backoff,
            retry_on=self.retry_on,
            exit_codes=self.exit_codes,
        )

    def to_record(self) -> dict[str, Any]:
        """The record, with the inner config's own record (no secret values)."""
        data = super().to_record()
        data["backend"] = self.backend.to_record()
        return data

    def cache_fields(self) -> dict[str, Any]:
        """A retrying backend's results are its inner backend's (the policy changes none)."""
        return self.backend.cache_fields()

    def create(self) -> RetryingBackend:
        """The inner backend wrapped in a :class:`RetryingBackend` with this policy."""
        return RetryingBackend(self.backend.create(), self.policy, runs_dir=self.runs_dir)

    @classmethod
    def handle_class(cls) -> builtins.type[RetryRunHandle]:
        """Saved retried runs load into :class:`RetryRunHandle`."""
        return RetryRunHandle


def _refused_inner(config: BackendConfig) -> str | None:
    """Why ``config`` cannot be retried as the inner backend, or None."""
    if isinstance(config, RetryConfig):
        return "a retrying backend inside another one multiplies the attempts: merge the policies"
    if getattr(config, "cache_failures", False):
        return (
            "the inner cache records failures (cache_failures=true), so every retry would get "
            "the recorded failure back: set cache_failures to false"
        )
    return None


class RetryingBackend(Backend[RetryConfig]):
    """Wraps ``inner`` so that a run ending in one of the policy's states runs again.

    Args:
        inner: the backend that runs every attempt (a cached one included).
        policy: how often and after which endings (default :class:`RetryPolicy`).
        runs_dir: where each retried run keeps its state folder (default: the
            inner backend's ``runs_dir``, else ``$TETHER_HOME/runs``).
    """

    def __init__(
        self,
        inner: Backend[Any],
        policy: RetryPolicy | None = None,
        *,
        runs_dir: Path | None = None,
    ) -> None:
        refusal = _refused_inner(inner.config)
        if refusal:
            raise ConfigError(f"RetryingBackend: {refusal}.")
        policy = policy if policy is not None else RetryPolicy()
        self._inner = inner
        super().__init__(
            RetryConfig(backend=inner.config, runs_dir=runs_dir, **policy.model_dump())
        )
        # The wrapper finds its own runs (a state folder per run), whatever the inner can.
        self.capabilities = inner.capabilities | {"find"}  # type: ignore[misc]

    @property
    def inner(self) -> Backend[Any]:
        """The backend that runs the attempts."""
        return self._inner

    @property
    def policy(self) -> RetryPolicy:
        """The default policy of this backend's runs."""
        return self.config.policy

    def _runs_dir(self) -> Path:
        configured = self.config.runs_dir or getattr(self._inner.config, "runs_dir", None)
        return Path(configured or default_runs_dir()).expanduser().absolute()

    async def submit(
        self, job: Job, *, policy: RetryPolicy | None = None, run_id: str | None = None
    ) -> RetryRunHandle:
        """Submit the first attempt and return the handle of every attempt to come.

        ``policy`` overrides the backend's for this job. ``run_id`` (default: a new
        one) names the retried run; see :meth:`find`. A first attempt the inner
        backend refuses raises here as it would without retries; a later one that
        cannot be submitted ends that attempt FAILED, with the reason.
        """
        run_id = chosen_run_id(run_id, job.name)
        folder = make_run_dir(self._runs_dir(), run_id)
        finds = "find" in self._inner.capabilities
        first = Attempt(number=1, run_id=f"{run_id}-1" if finds else None)
        handle = RetryRunHandle(
            run_id=run_id,
            job=job,
            config=self.config,
            folder=folder,
            shared=RetryState(run_id=run_id, attempts=[first]),
            policy=policy or self.policy,
            needs_secrets=needs_secrets(job, self.config),
            inner=self._inner,
        )
        # Intent before action: the state exists before the first attempt is
        # submitted, so find() after a crash right here picks it up again.
        write_state(folder, handle._shared)
        write_record(folder / "handle.json", handle.to_record(), sync=False)
        await handle._advance(raise_submit=True)
        return handle

    async def find(self, job: Job, run_id: str) -> RetryRunHandle | None:
        """The retried run ``submit(job, run_id=run_id)`` started, or None.

        Its state folder exists from the start, so a submitter that died before
        recording the handle (a pipeline killed mid-step) gets it back, attempt
        count and all; the handle uses ``job`` (with its secret values) from now on.
        """
        folder = self._runs_dir() / chosen_run_id(run_id, job.name)
        record = folder / "handle.json"
        if not record.is_file():
            return None
        from ..registry import load_handle

        handle = await load_handle(record)
        if not isinstance(handle, RetryRunHandle):
            raise RecordError(f"'{record}' is a {handle.backend_type!r} run, not a retried one.")
        handle._adopt(job, self._inner)
        await handle.refresh()
        return handle

    async def cache_fields(self) -> dict[str, Any]:
        """Refused: a cache goes inside the retries, not around them.

        A cache around a retrying backend would record one result for files spread
        over several attempts' folders; inside, each attempt is a cache submission
        whose success is recorded whole and whose failures never are.
        """
        raise ConfigError(
            "A cache cannot wrap a retrying backend: put the cache inside, "
            "RetryingBackend(CachedBackend(inner)) (in a file: type: retry, with "
            "backend: {type: cached, backend: {...}})."
        )
