"""tether: async-first orchestration of long jobs with resumable run handles.

A backend takes a :class:`Job` and returns a :class:`RunHandle` that can be
awaited, polled, cancelled, saved, and loaded in another process to re-attach to
the same run. See ``docs/`` for the guide.
"""

from __future__ import annotations

from ._version import __version__

# False at run time; type checkers take it as True and so see every import below.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from . import sync as sync
    from .api import run, run_sync
    from .backend import Backend
    from .backends.dask import DaskBackend, DaskConfig, DaskRunHandle
    from .backends.docker import DockerBackend, DockerConfig, DockerRunHandle, PrunedContainer
    from .backends.dummy import DummyBackend, DummyConfig, DummyRunHandle
    from .backends.inline import InlineBackend, InlineConfig, InlineRunHandle
    from .backends.local import LocalBackend, LocalConfig, LocalRunHandle
    from .backends.slurm import SlurmBackend, SlurmConfig, SlurmRunHandle
    from .cache import (
        CachedBackend,
        CachedConfig,
        CachedRunHandle,
        CacheStore,
        DirectoryStore,
        SQLiteStore,
    )
    from .call import Call
    from .capabilities import Availability
    from .config import BackendConfig
    from .discovery import BackendInfo, Recommendation, list_backends, recommended_backend
    from .ensemble import Ensemble, map_calls
    from .errors import (
        ArgumentTypeError,
        BackendError,
        BackendUnavailableError,
        CallError,
        ConfigError,
        DeadlockError,
        InvalidTransitionError,
        MapError,
        RecordError,
        RecordVersionError,
        RunFailedError,
        RunTimedOutError,
        SubmitError,
        TetherError,
        UnknownBackendError,
        WaitTimeout,
    )
    from .handle import RunHandle
    from .job import Job, Resources
    from .pipelines import (
        Pipeline,
        PipelineEvent,
        PipelineResult,
        Step,
        StepReport,
        StepState,
        pipeline,
    )
    from .postprocess import ArchivePostprocessor, NoopPostprocessor, Postprocessor
    from .registry import backend_configs, load_config, load_handle, load_job
    from .result import RunResult, RunState
    from .retry import Attempt, Backoff, RetryConfig, RetryingBackend, RetryPolicy, RetryRunHandle
    from .sync import SyncRunHandle
    from .watching import (
        ALL_COMPLETED,
        FIRST_COMPLETED,
        FIRST_FAILED,
        ReturnWhen,
        StateChange,
        Watching,
        as_completed,
        wait_all,
        watch,
    )

#: Where each public name lives; imported on first use (PEP 562), so that
#: ``import tether`` stays fast and loads no backend, pydantic model or YAML parser.
_SOURCES: dict[str, tuple[str, ...]] = {
    ".api": ("run", "run_sync"),
    ".backend": ("Backend",),
    ".backends.dask": ("DaskBackend", "DaskConfig", "DaskRunHandle"),
    ".backends.docker": ("DockerBackend", "DockerConfig", "DockerRunHandle", "PrunedContainer"),
    ".backends.dummy": ("DummyBackend", "DummyConfig", "DummyRunHandle"),
    ".backends.inline": ("InlineBackend", "InlineConfig", "InlineRunHandle"),
    ".backends.local": ("LocalBackend", "LocalConfig", "LocalRunHandle"),
    ".backends.slurm": ("SlurmBackend", "SlurmConfig", "SlurmRunHandle"),
    ".cache": (
        "CachedBackend",
        "CachedConfig",
        "CachedRunHandle",
        "CacheStore",
        "DirectoryStore",
        "SQLiteStore",
    ),
    ".call": ("Call",),
    ".capabilities": ("Availability",),
    ".config": ("BackendConfig",),
    ".discovery": ("BackendInfo", "Recommendation", "list_backends", "recommended_backend"),
    ".ensemble": ("Ensemble", "map_calls"),
    ".errors": (
        "ArgumentTypeError",
        "BackendError",
        "BackendUnavailableError",
        "CallError",
        "ConfigError",
        "DeadlockError",
        "InvalidTransitionError",
        "MapError",
        "RecordError",
        "RecordVersionError",
        "RunFailedError",
        "RunTimedOutError",
        "SubmitError",
        "TetherError",
        "UnknownBackendError",
        "WaitTimeout",
    ),
    ".handle": ("RunHandle",),
    ".job": ("Job", "Resources"),
    ".pipelines": (
        "Pipeline",
        "PipelineEvent",
        "PipelineResult",
        "Step",
        "StepReport",
        "StepState",
        "pipeline",
    ),
    ".postprocess": ("ArchivePostprocessor", "NoopPostprocessor", "Postprocessor"),
    ".registry": ("backend_configs", "load_config", "load_handle", "load_job"),
    ".result": ("RunResult", "RunState"),
    ".retry": (
        "Attempt",
        "Backoff",
        "RetryConfig",
        "RetryingBackend",
        "RetryPolicy",
        "RetryRunHandle",
    ),
    ".sync": ("SyncRunHandle",),
    ".watching": (
        "ALL_COMPLETED",
        "FIRST_COMPLETED",
        "FIRST_FAILED",
        "ReturnWhen",
        "StateChange",
        "Watching",
        "as_completed",
        "wait_all",
        "watch",
    ),
}
_EXPORTS = {name: module for module, names in _SOURCES.items() for name in names}

__all__ = [
    "ALL_COMPLETED",
    "FIRST_COMPLETED",
    "FIRST_FAILED",
    "ArchivePostprocessor",
    "ArgumentTypeError",
    "Attempt",
    "Availability",
    "Backend",
    "BackendConfig",
    "BackendError",
    "BackendInfo",
    "BackendUnavailableError",
    "Backoff",
    "CacheStore",
    "CachedBackend",
    "CachedConfig",
    "CachedRunHandle",
    "Call",
    "CallError",
    "ConfigError",
    "DaskBackend",
    "DaskConfig",
    "DaskRunHandle",
    "DeadlockError",
    "DirectoryStore",
    "DockerBackend",
    "DockerConfig",
    "DockerRunHandle",
    "DummyBackend",
    "DummyConfig",
    "DummyRunHandle",
    "Ensemble",
    "InlineBackend",
    "InlineConfig",
    "InlineRunHandle",
    "InvalidTransitionError",
    "Job",
    "LocalBackend",
    "LocalConfig",
    "LocalRunHandle",
    "MapError",
    "NoopPostprocessor",
    "Pipeline",
    "PipelineEvent",
    "PipelineResult",
    "Postprocessor",
    "PrunedContainer",
    "Recommendation",
    "RecordError",
    "RecordVersionError",
    "Resources",
    "RetryConfig",
    "RetryPolicy",
    "RetryRunHandle",
    "RetryingBackend",
    "ReturnWhen",
    "RunFailedError",
    "RunHandle",
    "RunResult",
    "RunState",
    "RunTimedOutError",
    "SQLiteStore",
    "SlurmBackend",
    "SlurmConfig",
    "SlurmRunHandle",
    "StateChange",
    "Step",
    "StepReport",
    "StepState",
    "SubmitError",
    "SyncRunHandle",
    "TetherError",
    "UnknownBackendError",
    "WaitTimeout",
    "Watching",
    "__version__",
    "as_completed",
    "backend_configs",
    "list_backends",
    "load_config",
    "load_handle",
    "load_job",
    "map_calls",
    "pipeline",
    "recommended_backend",
    "run",
    "run_sync",
    "wait_all",
    "watch",
]


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if not TYPE_CHECKING:  # type checkers see the imports above, not this hook

    def __getattr__(name: str) -> object:
        """Import a public name, or a submodule (``tether.sync``), on first use."""
        # __import__ rather than importlib.import_module: -X importtime then shows
        # what a lazy name costs.
        module = _EXPORTS.get(name)
        if module is not None:
            value = getattr(__import__(__name__ + module, fromlist=[name]), name)
        elif name.startswith("__"):
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        else:
            # Submodules used to be imported by this module; keep `tether.job` working.
            try:
                value = __import__(f"{__name__}.{name}", fromlist=["*"])
            except ModuleNotFoundError as exc:
                if exc.name != f"{__name__}.{name}":
                    raise
                raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
        globals()[name] = value
        return value


del TYPE_CHECKING
