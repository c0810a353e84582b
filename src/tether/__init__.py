"""tether: async-first orchestration of long jobs with resumable run handles.

A backend takes a :class:`Job` and returns a :class:`RunHandle` that can be
awaited, polled, cancelled, saved, and loaded in another process to re-attach to
the same run. See ``docs/`` for the guide.
"""

from __future__ import annotations

from . import sync as sync  # tether.sync: the run-handle API for synchronous code
from ._version import __version__
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
