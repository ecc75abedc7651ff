"""The edges of `check-config --what-if`: read the live facts from Prometheus (the exporter's
container series, the allocator's allocation series) and print the verdicts as text or JSON."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping

from .durations import format_duration
from .gpu_status.query import PrometheusClient, Sample
from .whatif import RunningContainer, WhatIf

FACTS_QUERY = (
    '{__name__=~"ds01_container_(info|start_time_seconds|last_busy_timestamp_seconds'
    '|keep_alive|idle_deadline_timestamp_seconds|runtime_deadline_timestamp_seconds)"}'
)
HOLDINGS_QUERY = "ds01_allocation_device"


def containers_from(samples: tuple[Sample, ...]) -> list[RunningContainer]:
    """One RunningContainer per container_id that has an info series and every fact."""
    facts: dict[str, dict[str, float]] = {}
    info: dict[str, Mapping[str, str]] = {}
    for s in samples:
        cid = s.labels.get("container_id", "")
        if not cid:
            continue
        if s.name == "ds01_container_info":
            info[cid] = s.labels
        else:
            facts.setdefault(cid, {})[s.name.removeprefix("ds01_container_")] = s.value
    result = []
    for cid, labels in info.items():
        f = facts.get(cid, {})
        try:
            result.append(
                RunningContainer(
                    container_id=cid,
                    name=labels.get("container", ""),
                    user=labels.get("user", "unknown"),
                    type=labels.get("type", "docker"),
                    first_start=f["start_time_seconds"],
                    last_busy=f["last_busy_timestamp_seconds"],
                    keep_alive=f.get("keep_alive", 0.0) == 1.0,
                    idle_deadline=f["idle_deadline_timestamp_seconds"],
                    runtime_deadline=f["runtime_deadline_timestamp_seconds"],
                )
            )
        except KeyError:
            continue  # a container the exporter is still describing: judged next time
    return result


def holdings_from(samples: tuple[Sample, ...]) -> dict[str, int]:
    """Devices held per user (live allocations, one series per device)."""
    seen = {(s.labels.get("user", ""), s.labels.get("device_uuid", "")) for s in samples}
    return dict(Counter(user for user, _ in seen if user))


def live_facts(client: PrometheusClient, at: float) -> tuple[list[RunningContainer], dict]:
    return (
        containers_from(client.query(FACTS_QUERY, at=at)),
        holdings_from(client.query(HOLDINGS_QUERY, at=at)),
    )


def _shift(seconds: float) -> str:
    if seconds == 0:
        return "unchanged"
    if math.isinf(seconds):
        return "no longer set" if seconds > 0 else "now set (was none)"
    sign = "later" if seconds > 0 else "earlier"
    return f"{format_duration(abs(seconds))} {sign}"


def render_text(result: WhatIf) -> str:
    stops = [c for c in result.containers if c.action == "stop"]
    warns = [c for c in result.containers if c.action == "warn"]
    lines = [f"what-if against {len(result.containers)} running GPU container(s); nothing changed"]
    lines.append(f"stopped at once ({len(stops)}):")
    lines += [f"  {c.name} ({c.user}, {c.group}): {c.reason}" for c in stops] or ["  none"]
    lines.append(f"warned at once ({len(warns)}):")
    lines += [f"  {c.name} ({c.user}, {c.group}): {c.reason}" for c in warns] or ["  none"]
    moved = [c for c in result.containers if c.idle_moves_by or c.runtime_moves_by]
    lines.append(f"deadlines that move ({len(moved)}):")
    lines += [
        f"  {c.name} ({c.user}): idle {_shift(c.idle_moves_by)}, "
        f"runtime {_shift(c.runtime_moves_by)}"
        for c in moved
    ] or ["  none"]
    lines.append(f"over quota ({len(result.over_quota)}):")
    lines += [
        f"  {q.user} ({q.group}): holds {q.holding} of {q.max_gpus}" for q in result.over_quota
    ] or ["  none"]
    protected = [c.name for c in result.containers if c.protected]
    if protected:
        lines.append(f"protected (never stopped): {', '.join(protected)}")
    return "\n".join(lines)


def _num(value: float) -> float | str:
    return value if math.isfinite(value) else ("+Inf" if value > 0 else "-Inf")


def to_json(result: WhatIf) -> dict[str, object]:
    return {
        "evaluated_at": result.at,
        "stopped": result.stopped(),
        "warned": [c.name for c in result.containers if c.action == "warn"],
        "containers": [
            {
                "container_id": c.container_id,
                "container": c.name,
                "user": c.user,
                "group": c.group,
                "action": c.action,
                "reason": c.reason,
                "protected": c.protected,
                "idle_deadline": _num(c.idle_deadline),
                "runtime_deadline": _num(c.runtime_deadline),
                "idle_moves_by": _num(c.idle_moves_by),
                "runtime_moves_by": _num(c.runtime_moves_by),
            }
            for c in result.containers
        ],
        "over_quota": [
            {"user": q.user, "group": q.group, "holding": q.holding, "max_gpus": q.max_gpus}
            for q in result.over_quota
        ],
    }
