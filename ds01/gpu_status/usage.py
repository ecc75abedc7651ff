"""GPU-hours of one user over the last 7 and 30 days, from the ds01-usage recording rules.

Each recorded sample is the GPU-hours of one rule interval, so a window's GPU-hours is the
sum of its samples: the numbers here are exactly what the same query in Prometheus answers.
"""

from __future__ import annotations

from dataclasses import dataclass

from .query import PrometheusClient

WINDOWS = (("7d", 7 * 86400.0), ("30d", 30 * 86400.0))
KINDS = ("held", "busy", "idle")


@dataclass(frozen=True)
class UsageWindow:
    window: str
    held: float
    busy: float
    idle: float

    def to_json(self) -> dict[str, object]:
        return {"window": self.window, "held": self.held, "busy": self.busy, "idle": self.idle}


def label_value(text: str) -> str:
    """A PromQL double-quoted label value."""
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def usage_query(*, kind: str, selector: str, window: str) -> str:
    """GPU-hours of `kind` (held, busy, idle) for the series `selector` picks, over `window`."""
    return f"sum(sum_over_time(ds01:user_gpu_{kind}:gpu_hours{{{selector}}}[{window}]))"


def user_usage(client: PrometheusClient, user: str, at: float) -> list[UsageWindow]:
    """Both windows for `user`, every query evaluated at the same instant `at`."""
    selector = f'user="{label_value(user)}"'
    result = []
    for window, _ in WINDOWS:
        values = {}
        for kind in KINDS:
            samples = client.query(usage_query(kind=kind, selector=selector, window=window), at=at)
            values[kind] = samples[0].value if samples else 0.0
        result.append(UsageWindow(window, values["held"], values["busy"], values["idle"]))
    return result


def render_usage(user: str, windows: list[UsageWindow]) -> str:
    lines = [f"GPU-hours of {user} (a MIG instance counts by its share of the GPU):"]
    lines.append(f"  {'window':<8}{'held':>10}{'busy':>10}{'idle':>10}")
    for w in windows:
        lines.append(f"  {w.window:<8}{w.held:>10.2f}{w.busy:>10.2f}{w.idle:>10.2f}")
    return "\n".join(lines)
