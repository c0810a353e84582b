"""The pipeline's DAG: every dependency named, no cycles, a start order."""

from __future__ import annotations

from collections.abc import Mapping

from .._loading import quote
from ..errors import ConfigError
from .step import Step


def check_graph(steps: Mapping[str, Step]) -> list[str]:
    """Step names in an order where each comes after everything it waits for.

    Raises:
        ConfigError: naming the unknown step a step depends on, or the cycle
            (``a -> b -> a``) that makes the pipeline impossible to run.
    """
    for step in steps.values():
        for name in step.upstream():
            if name not in steps:
                known = ", ".join(sorted(steps))
                raise ConfigError(
                    f"step {quote(step.name)} depends on {quote(name)}, which is not a step "
                    f"of this pipeline (steps: {known})"
                )
            if name == step.name:
                raise ConfigError(f"step {quote(name)} depends on itself")
    order: list[str] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: placed
    for start in steps:
        if state.get(start) == 2:
            continue
        path: list[str] = []
        stack: list[tuple[str, list[str]]] = [(start, list(steps[start].upstream()))]
        state[start] = 1
        path.append(start)
        while stack:
            name, todo = stack[-1]
            if not todo:
                stack.pop()
                path.pop()
                state[name] = 2
                order.append(name)
                continue
            nxt = todo.pop()
            if state.get(nxt) == 1:
                cycle = [*path[path.index(nxt) :], nxt]
                raise ConfigError(
                    f"the steps form a cycle: {' -> '.join(cycle)} (each waits for the next); "
                    "remove one of these dependencies"
                )
            if state.get(nxt) != 2:
                state[nxt] = 1
                path.append(nxt)
                stack.append((nxt, list(steps[nxt].upstream())))
    return order


def dependants(steps: Mapping[str, Step]) -> dict[str, list[str]]:
    """Step name → the steps that wait for it directly."""
    below: dict[str, list[str]] = {name: [] for name in steps}
    for step in steps.values():
        for name in step.upstream():
            below[name].append(step.name)
    return below
