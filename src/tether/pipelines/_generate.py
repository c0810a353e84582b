"""The ``generate`` stage: a step's member jobs, with what upstream steps made filled in.

:class:`~tether.pipelines.step.Ref` placeholders in a Call's arguments become the
upstream step's values, output paths or results; the output files of the steps
named in ``inputs_from`` are staged as inputs of every member.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..call import Call
from ..errors import ConfigError
from ..job import Job
from .report import StepReport
from .step import Ref, Step, fill_refs, refs_in


def generate(
    step: Step,
    steps: dict[str, Step],
    reports: dict[str, StepReport],
    values: dict[str, list[Any]],
) -> list[Job]:
    """The step's member jobs with upstream values and output files filled in.

    Raises:
        ConfigError: when two staged files would land on the same name.
    """
    staged: list[Path] = []
    for up in step.inputs_from:
        staged += reports[up].outputs
    if staged:
        seen: dict[str, Path] = {}
        for path in staged:
            if path.name in seen:
                raise ConfigError(
                    f"step {step.name!r}: inputs from {', '.join(step.inputs_from)} collide "
                    f"on the name {path.name!r} ({seen[path.name]} and {path}); give the "
                    "outputs distinct names, or pass them to a Call as step.outputs"
                )
            seen[path.name] = path

    def value_of(ref: Ref) -> Any:
        report = reports[ref.step]
        runs = report.runs
        fanned_out = steps[ref.step].fanned_out
        if ref.what == "outputs":
            return report.outputs
        if ref.what == "result":
            results = [run.result for run in runs]
            return results[0] if len(runs) == 1 and not fanned_out else results
        got = values.get(ref.step, [])
        if not fanned_out:
            return got[0] if got else None
        return list(got)

    jobs = []
    for job in step.members():
        if isinstance(job, Call):
            arguments = (job.args, job.kwargs)
            if any(True for _ in refs_in(arguments)):
                args, kwargs = fill_refs(arguments, value_of)
                job = job.with_arguments(*args, **kwargs)
        if staged:
            job = _with_inputs(job, staged)
        jobs.append(job)
    return jobs


def _with_inputs(job: Job, staged: list[Path]) -> Job:
    inputs = [*job.inputs, *staged]
    if isinstance(job, Call):
        return job.options(inputs=inputs)
    return job.model_copy(update={"inputs": inputs})
