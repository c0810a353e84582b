"""``tether pipeline run|status|validate``: pipelines from YAML files, resumable."""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

import anyio

from ..errors import ConfigError
from ..pipelines import journal
from ..pipelines.report import PipelineEvent, PipelineResult, StepState
from ..pipelines.spec import load_pipeline
from ._exits import EXIT_OK, EXIT_RUN_FAILED
from ._render import table, write_lines

if TYPE_CHECKING:
    from rich.live import Live
    from rich.table import Table

    from ..pipelines.runner import Pipeline


async def run(args: argparse.Namespace) -> int:
    """Run (or resume) the pipeline in FILE; exit 0 when every step succeeded."""
    loaded = load_pipeline(args.file)
    state = args.state or loaded.state
    if args.fresh and state.exists():
        _check_free(state)
        state.unlink()
    fail_fast = loaded.fail_fast and not args.keep_going
    pipeline = loaded.pipeline
    events = pipeline.events()
    display = _Display(sys.stderr, pipeline, live=sys.stderr.isatty())
    result: PipelineResult | None = None
    async with anyio.create_task_group() as tg:

        async def show() -> None:
            async with events:
                async for event in events:
                    display.update(event)

        tg.start_soon(show)
        try:
            result = await pipeline.run(
                max_concurrency=args.max_concurrency or loaded.max_concurrency,
                fail_fast=fail_fast,
                state=state,
            )
        except anyio.get_cancelled_exc_class():  # Ctrl-C: the runs are cancelled, recorded
            display.close()
            running = display.running()
            what = ", ".join(running) if running else "nothing (no step was running)"
            write_lines(
                sys.stderr,
                [
                    f"tether: interrupted: cancelled {what}",
                    f"tether: resume with `tether pipeline run {args.file}` (state file {state})",
                ],
            )
            raise
        finally:
            display.close()
            if result is None:  # the run never got going: nobody will close the events
                tg.cancel_scope.cancel()
    assert result is not None
    if args.json:
        write_lines(sys.stdout, [result.model_dump_json(indent=2)])
    else:
        write_lines(sys.stdout, _summary(result))
        if not result.success:
            write_lines(sys.stderr, [f"tether: resume with `tether pipeline run {args.file}`"])
    return EXIT_OK if result.success else EXIT_RUN_FAILED


async def status(args: argparse.Namespace) -> int:
    """Print what a state file records: each step's state, runs and reason."""
    path = args.state
    if not path.is_file():
        raise ConfigError(f"No pipeline state file at '{path}': check the path.")
    replay = journal.read(path)
    running = _in_use(path)
    steps: dict[str, dict[str, Any]] = {
        name: {
            "state": step.state,
            "reason": step.reason,
            "runs": [
                {
                    "index": index,
                    "run_id": member.run_id,
                    "state": (member.result or {}).get("state")
                    or ("RUNNING" if member.handle else "SUBMITTING"),
                }
                for index, member in sorted(step.members.items())
            ],
            "postprocess_results": step.postprocess,
        }
        for name, step in replay.steps.items()
    }
    if args.json:
        document = {"pipeline": replay.name, "running": running, "steps": steps}
        write_lines(sys.stdout, [json.dumps(document, indent=2)])
    else:
        rows = [["STEP", "STATE", "RUNS", "REASON"]]
        for name, info in steps.items():
            runs = info["runs"]
            ok = sum(1 for run in runs if run["state"] == "SUCCEEDED")
            rows.append([name, str(info["state"]), f"{ok}/{len(runs)}", str(info["reason"] or "")])
        lines = [f"pipeline {replay.name}: " + ("running now" if running else "not running")]
        write_lines(sys.stdout, lines + table(rows))
    done = steps and all(info["state"] == StepState.SUCCEEDED for info in steps.values())
    return EXIT_OK if done or running else EXIT_RUN_FAILED


async def validate(args: argparse.Namespace) -> int:
    """Check a pipeline file; print its steps in start order."""
    loaded = load_pipeline(args.file)
    names = ", ".join(loaded.pipeline.steps)
    count = len(loaded.pipeline.steps)
    write_lines(
        sys.stdout,
        [
            f"{args.file}: valid pipeline {loaded.pipeline.name!r}, "
            f"{count} steps: {names}; state file {loaded.state}"
        ],
    )
    return EXIT_OK


def _in_use(path: Any) -> bool:
    """Whether a running pipeline holds the state file's lock."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _check_free(path: Any) -> None:
    if _in_use(path):
        raise ConfigError(
            f"Pipeline state file '{path}' is in use by a running pipeline: "
            "--fresh cannot start over while it runs"
        )


def _summary(result: PipelineResult) -> list[str]:
    rows = [["STEP", "STATE", "RUNS", "TIME", "REASON"]]
    for name, step in result.steps.items():
        ok = sum(1 for run in step.runs if run.state is not None and run.state.value == "SUCCEEDED")
        took = ""
        if step.started_at and step.ended_at:
            took = f"{(step.ended_at - step.started_at).total_seconds():.1f}s"
        reason = step.reason or ""
        rows.append([name, step.state.value, f"{ok}/{len(step.runs)}", took, reason])
    verdict = "succeeded" if result.success else "did not succeed"
    failed = result.failed()
    tail = f" ({', '.join(failed)})" if failed and len(failed) <= 5 else ""
    return [*table(rows), f"pipeline {result.name} {verdict}{tail}"]


class _Display:
    """Progress on stderr: a live table on a terminal, else one line per step change."""

    def __init__(self, stream: TextIO, pipeline: Pipeline, *, live: bool) -> None:
        self._stream = stream
        self._states: dict[str, str] = {name: "PENDING" for name in pipeline.steps}
        self._runs: dict[str, dict[int, str]] = {name: {} for name in pipeline.steps}
        self._started = time.monotonic()
        self._live: Live | None = None
        if live:
            from rich.console import Console
            from rich.live import Live

            console = Console(file=stream, highlight=False)
            self._live = Live(self._table(), console=console, transient=False, refresh_per_second=4)
            self._live.start()

    def update(self, event: PipelineEvent) -> None:
        if event.kind == "step" and event.step is not None:
            self._states[event.step] = event.state
            if self._live is None:
                write_lines(self._stream, [f"tether: {event}"])
        elif event.kind == "run" and event.step is not None and event.member is not None:
            self._runs[event.step][event.member] = event.state
        if self._live is not None:
            self._live.update(self._table())

    def running(self) -> list[str]:
        """The steps running (or being cancelled) as last seen."""
        return [name for name, state in self._states.items() if state in ("RUNNING", "CANCELLED")]

    def _table(self) -> Table:
        from rich.table import Table

        elapsed = time.monotonic() - self._started
        grid = Table(title=f"pipeline  {elapsed:.0f}s", title_justify="left", box=None)
        for column in ("step", "state", "runs"):
            grid.add_column(column)
        for name, state in self._states.items():
            runs = self._runs[name]
            done = sum(1 for s in runs.values() if s == "SUCCEEDED")
            grid.add_row(name, state, f"{done}/{len(runs)}" if runs else "")
        return grid

    def close(self) -> None:
        if self._live is not None:
            with contextlib.suppress(Exception):
                self._live.stop()
            self._live = None
