"""Postprocessors: work on a finished run's outputs (archive, analyse, publish)."""

from __future__ import annotations

from .archive import ArchivePostprocessor
from .base import (
    NoopPostprocessor,
    Postprocessor,
    get_postprocessor,
    postprocessors,
    processor_name,
    run_postprocessor,
)

__all__ = [
    "ArchivePostprocessor",
    "NoopPostprocessor",
    "Postprocessor",
    "get_postprocessor",
    "postprocessors",
    "processor_name",
    "run_postprocessor",
]
