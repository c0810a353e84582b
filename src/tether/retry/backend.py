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

from pydantic import ConfigDict, Field, SerializeAsAny

from .._files import default_runs_dir
from .._runs import chosen_run_id, make_run_dir
from .._wrapping import INNER_SCHEMA, WrapperConfig
from ..backend import Backend
from ..config import BackendConfig
from ..errors import ConfigError, RecordError
from ..job import Job
from ..records import write_record
from ._state import Attempt, RetryState, write_state
from .handle import RetryRunHandle, needs_secrets
from .policy import RetryPolicy


class RetryConfig(WrapperConfig, RetryPolicy):
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
    backend: Annotated[SerializeAsAny[BackendConfig], INNER_SCHEMA] = Field(
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

    wrapper_name: ClassVar[str] = "retrying backend"
    cache_ignore: ClassVar[frozenset[str]] = frozenset({"timeout", "runs_dir"})

    @classmethod
    def _refused_inner(cls, inner: BackendConfig) -> str | None:
        """Why ``inner`` cannot be retried as the inner backend, or None."""
        if isinstance(inner, RetryConfig):
            return (
                "a retrying backend inside another one multiplies the attempts: merge the policies"
            )
        if getattr(inner, "cache_failures", False):
            return (
                "the inner cache records failures (cache_failures=true), so every retry would get "
                "the recorded failure back: set cache_failures to false"
            )
        return None

    @property
    def policy(self) -> RetryPolicy:
        """The retry policy these settings give."""
        return RetryPolicy(
            retries=self.retries,
            backoff=self.backoff,
            retry_on=self.retry_on,
            exit_codes=self.exit_codes,
        )

    def create(self) -> RetryingBackend:
        """The inner backend wrapped in a :class:`RetryingBackend` with this policy."""
        return RetryingBackend(self.backend.create(), self.policy, runs_dir=self.runs_dir)

    @classmethod
    def handle_class(cls) -> builtins.type[RetryRunHandle]:
        """Saved retried runs load into :class:`RetryRunHandle`."""
        return RetryRunHandle


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
        refusal = RetryConfig._refused_inner(inner.config)
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
