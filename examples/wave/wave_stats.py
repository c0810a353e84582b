"""Python steps of the pipelines guide: a summary of the model runs, and an ensemble member."""

from __future__ import annotations

from pathlib import Path


def summarise(paths: list[str]) -> dict[str, float]:
    """The wave height of each run (``wind=10 hs=0.21`` lines), by wind speed, plus the maximum."""
    heights: dict[str, float] = {}
    for path in paths:
        fields = dict(item.split("=") for item in Path(path).read_text().split())
        heights[fields["wind"]] = float(fields["hs"])
    return {**heights, "max": max(heights.values())}


def member(seed: object, wind: float) -> float:
    """One ensemble member: the wave height for ``wind`` with a seeded perturbation."""
    import numpy as np

    rng = np.random.default_rng(seed)  # type: ignore[arg-type]
    return wind * 0.021 * (1 + 0.1 * rng.normal())
