"""Pipelines: DAGs of steps (jobs on backends, postprocessors), resumable after a crash."""

from __future__ import annotations

from .report import (
    MemberReport,
    PipelineEvent,
    PipelineResult,
    StageReport,
    StepReport,
    StepState,
)
from .runner import DEFAULT_CONCURRENCY, Pipeline, pipeline
from .step import Ref, Step

__all__ = [
    "DEFAULT_CONCURRENCY",
    "MemberReport",
    "Pipeline",
    "PipelineEvent",
    "PipelineResult",
    "Ref",
    "StageReport",
    "Step",
    "StepReport",
    "StepState",
    "pipeline",
]
