"""Functions and pipelines the pipeline tests run: importable by name, so Call steps
work in worker processes, and a fresh interpreter builds the very same pipeline
(``python -c "from tests.pipeline_support import main; main()" WHAT TMP``)."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import anyio

from tether import Call, InlineConfig, Job, LocalConfig, Pipeline, RunResult, Step

# -- Call targets ------------------------------------------------------------------------


def square(x: int) -> int:
    return x * x


def add(a: int, b: int = 0) -> int:
    return a + b


def total(values: list[int]) -> int:
    return sum(values)


def counted(log: str, value: Any) -> Any:
    """``value``, leaving a line in ``log`` each time it really runs."""
    with open(log, "a") as handle:
        handle.write("ran\n")
    return value


def read_texts(paths: list[Path]) -> list[str]:
    """The text of each file: ``paths`` must be Paths (what ``.outputs`` Refs give)."""
    if not all(isinstance(path, Path) and path.is_absolute() for path in paths):
        raise TypeError(f"expected absolute Paths, got {paths!r}")
    return [path.read_text().strip() for path in paths]


def describe(result: RunResult | list[RunResult]) -> Any:
    """What a ``.result`` Ref handed over: (type, run_id, state) of each RunResult."""
    if isinstance(result, list):
        return [describe(item) for item in result]
    return [type(result).__name__, result.run_id, result.state.value]


def fail(message: str) -> None:
    raise ValueError(message)


# -- concurrency counting (inline threads: the calls run in this process) ---------------

_lock = threading.Lock()
_active: dict[str, int] = {}
_peak: dict[str, int] = {}


def tracked(key: str, seconds: float, value: Any = None) -> Any:
    """Counts the calls under ``key`` that are in flight at once (see :func:`peak`)."""
    with _lock:
        _active[key] = _active.get(key, 0) + 1
        _peak[key] = max(_peak.get(key, 0), _active[key])
    try:
        time.sleep(seconds)
    finally:
        with _lock:
            _active[key] -= 1
    return value


def peak(key: str) -> int:
    return _peak.get(key, 0)


# -- postprocessors ------------------------------------------------------------------------


class Verdict:
    """A postprocessor that answers ``success`` (and counts its calls in ``log``)."""

    def __init__(self, success: bool = True, log: Path | None = None) -> None:
        self.success = success
        self.log = log

    def process(self, result: RunResult, **kwargs: Any) -> dict[str, Any]:
        if self.log is not None:
            with open(self.log, "a") as handle:
                handle.write(f"{result.run_id}\n")
        word = "fine" if self.success else "the output is wrong"
        return {"success": self.success, "message": f"{word} {kwargs.get('tag', '')}".strip()}


class Tracked:
    """A postprocessor that takes ``seconds``, counted under ``key`` (see :func:`peak`)."""

    def __init__(self, key: str, seconds: float) -> None:
        self.key = key
        self.seconds = seconds

    def process(self, result: RunResult, **kwargs: Any) -> dict[str, Any]:
        tracked(self.key, self.seconds)
        return {"success": True, "message": "counted"}


class Explodes:
    """A postprocessor that raises."""

    def process(self, result: RunResult, **kwargs: Any) -> dict[str, Any]:
        raise RuntimeError("no such variable 'Hs'")


# -- pipelines a fresh interpreter builds too ------------------------------------------------


def crash_pipeline(tmp: Path) -> Pipeline:
    """A long local run (2 s), then a quick one; every real start leaves a line."""
    config = LocalConfig(runs_dir=tmp / "runs", cancel_grace=1)
    long = Step(
        "long",
        Job(command=f"echo ran >> {tmp / 'long.count'}; sleep 2; echo done > out.txt"),
        backend=config,
    )
    after = Step("after", Job(command=f"echo ran >> {tmp / 'after.count'}"), depends_on=[long])
    return Pipeline([long, after], name="crash", backend=config, state=tmp / "state.jsonl")


def inline_values_pipeline(tmp: Path, increment: int) -> Pipeline:
    """An inline Call step whose value a second Call step adds ``increment`` to."""
    config = InlineConfig(mode="threads", n_jobs=2)
    first = Step("first", Call(counted, str(tmp / "first.count"), 5), backend=config)
    second = Step("second", Call(add, first.value, increment), backend=config)
    return Pipeline([first, second], name="values", state=tmp / "state.jsonl")


def set_argument_pipeline(tmp: Path) -> Pipeline:
    """A Call step whose argument is a set (pickled in hash order)."""
    job = Call(counted, str(tmp / "set.count"), {"alpha", "beta", "gamma", "delta"})
    step = Step("s", job, backend=InlineConfig(mode="sequential"))
    return Pipeline([step], name="sets", state=tmp / "state.jsonl")


def main() -> None:
    """Run the pipeline named by argv[1] for the folder argv[2]; print a JSON summary."""
    what, tmp = sys.argv[1], Path(sys.argv[2])
    pipeline = {
        "crash": lambda: crash_pipeline(tmp),
        "inline-values": lambda: inline_values_pipeline(tmp, 1),
        "set-argument": lambda: set_argument_pipeline(tmp),
    }[what]()
    result = anyio.run(pipeline.run)
    summary = {
        "success": result.success,
        "steps": {name: step.state.value for name, step in result.steps.items()},
        "resumed": {name: step.resumed for name, step in result.steps.items()},
    }
    print(json.dumps(summary))
