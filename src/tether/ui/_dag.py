"""A pipeline's DAG as an inline SVG picture, drawn on the server.

Steps are laid out in columns by depth (a step sits one column right of the deepest
step it waits for), each column in the pipeline's order, with one pass of the
barycentre rule so edges cross less. Each step is a box coloured by its state
(the ``state-…`` classes of the stylesheet) and a link to its run.
"""

from __future__ import annotations

from collections.abc import Callable
from html import escape

from ._sources import PipelineView, StepView

BOX_W, BOX_H = 168, 48
GAP_X, GAP_Y = 72, 28
MARGIN = 16
MAX_LABEL = 20


def layers(steps: dict[str, StepView]) -> list[list[str]]:
    """Step names by column: each step right of every step it waits for."""
    depth: dict[str, int] = {}

    def place(name: str, path: tuple[str, ...] = ()) -> int:
        if name in depth:
            return depth[name]
        if name in path:  # a cycle cannot run; draw it rather than recurse forever
            return 0
        ups = [u for u in steps[name].upstream if u in steps]
        depth[name] = 1 + max((place(u, (*path, name)) for u in ups), default=-1)
        return depth[name]

    for name in steps:
        place(name)
    columns: list[list[str]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for name in steps:  # the pipeline's own order within a column
        columns[depth[name]].append(name)
    for number in range(1, len(columns)):
        row = {name: i for i, name in enumerate(columns[number - 1])}

        def centre(name: str, row: dict[str, int] = row) -> float:
            ups = [row[u] for u in steps[name].upstream if u in row]
            return sum(ups) / len(ups) if ups else float("inf")

        columns[number].sort(key=centre)
    return columns


def _label(text: str) -> str:
    return text if len(text) <= MAX_LABEL else text[: MAX_LABEL - 1] + "…"


def dag_svg(view: PipelineView, link: Callable[[str], str]) -> str:
    """The picture of ``view``'s steps; ``link(step)`` is where clicking a step goes."""
    steps = view.steps
    if not steps:
        return '<p class="muted">No steps recorded yet.</p>'
    columns = layers(steps)
    where: dict[str, tuple[int, int]] = {}
    for number, column in enumerate(columns):
        for index, name in enumerate(column):
            x = MARGIN + number * (BOX_W + GAP_X)
            y = MARGIN + index * (BOX_H + GAP_Y)
            where[name] = (x, y)
    width = MARGIN * 2 + len(columns) * BOX_W + (len(columns) - 1) * GAP_X
    tallest = max(len(column) for column in columns)
    height = MARGIN * 2 + tallest * BOX_H + (tallest - 1) * GAP_Y
    parts = [
        f'<svg class="dag" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="steps of pipeline {escape(view.name)}">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" '
        'class="arrow"/></marker></defs>',
    ]
    for name, step in steps.items():
        x2, y2 = where[name]
        for up in step.upstream:
            if up not in where:
                continue
            x1, y1 = where[up]
            sx, sy, ex, ey = x1 + BOX_W, y1 + BOX_H // 2, x2, y2 + BOX_H // 2
            bend = (ex - sx) // 2
            parts.append(
                f'<path class="edge" d="M {sx} {sy} C {sx + bend} {sy}, {ex - bend} {ey}, '
                f'{ex} {ey}" marker-end="url(#arrow)"/>'
            )
    for name, step in steps.items():
        x, y = where[name]
        runs = len(step.members)
        done = sum(1 for m in step.members if m.state == "SUCCEEDED")
        detail = step.state + (f" · {done}/{runs}" if runs > 1 else "")
        parts.append(
            f'<a href="{escape(link(name))}" class="step" data-step="{escape(name)}" '
            f'data-state="{escape(step.state)}">'
            f"<title>{escape(name)}: {escape(step.state)}"
            f"{escape(' — ' + step.reason) if step.reason else ''}</title>"
            f'<rect x="{x}" y="{y}" width="{BOX_W}" height="{BOX_H}" rx="8" '
            f'class="box state-{escape(step.state)}"/>'
            f'<text x="{x + 12}" y="{y + 20}" class="name">{escape(_label(name))}</text>'
            f'<text x="{x + 12}" y="{y + 38}" class="detail">{escape(detail)}</text></a>'
        )
    parts.append("</svg>")
    return "".join(parts)
