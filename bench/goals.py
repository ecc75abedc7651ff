"""Benchmark goals as one line each, so `bench/summary.py` can gather them into one table.

A benchmark prints `GOAL {json}` per goal of issue 16 (what, the figure, held or not) next to
its own human-readable output; the summary runs every benchmark and collects those lines.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

MARK = "GOAL "


@dataclass(frozen=True)
class Goal:
    """One measured goal: `figure` is what was measured, `target` what it had to be.

    `held` None: a figure reported without a goal (the issue set no number)."""

    bench: str
    goal: str
    figure: str
    target: str
    held: bool | None

    def line(self) -> str:
        return MARK + json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def parse(cls, line: str) -> Goal | None:
        if not line.startswith(MARK):
            return None
        return cls(**json.loads(line[len(MARK) :]))


def report(goal: Goal) -> None:
    """Print the goal for a person and for the summary."""
    print(f"  {verdict(goal):<8}  {goal.goal}: {goal.figure}  (target {goal.target})")
    print(goal.line(), flush=True)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1) of a non-empty list."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def verdict(goal: Goal) -> str:
    return "figure" if goal.held is None else "held" if goal.held else "NOT held"
