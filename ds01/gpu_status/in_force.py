"""`gpu-status --mine`/`--user`: what is in force for that user now, under the table.

Per container the next stop (time and kind) and a fresh keep-alive with its end, then the
user's exemptions from the policy. Keep-alive ends come from the exporter's /api/state (the
only place the file's age is known); without it the line says "keep-alive on".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import tzinfo
from typing import Any

import requests

from ..durations import format_clock, format_duration
from ..policy import Exemption
from .view import StatusView

KINDS = {"idle": "idle stop", "max_runtime": "max runtime stop"}


def relative(ts: float, now: float) -> str:
    left = ts - now
    if abs(left) < 1:
        return "now"
    return f"in {format_duration(left)}" if left > 0 else f"{format_duration(-left)} ago"


def keep_alive_ends(exporter_url: str | None, timeout: float = 2.0) -> dict[str, float]:
    """container_id -> when its keep-alive goes stale; {} when the exporter cannot be read."""
    if not exporter_url:
        return {}
    try:
        answer = requests.get(exporter_url.rstrip("/") + "/api/state", timeout=timeout)
        answer.raise_for_status()
        entries = answer.json().get("containers") or []
    except (requests.RequestException, ValueError, AttributeError):
        return {}
    return {
        str(e["container_id"]): float(e["keep_alive_until"])
        for e in entries
        if isinstance(e, Mapping) and isinstance(e.get("keep_alive_until"), int | float)
    }


def in_force(
    view: StatusView,
    *,
    exemptions: Sequence[Exemption],
    keep_alive_until: Mapping[str, float],
) -> dict[str, Any]:
    """The JSON form: per container next stop and keep-alive, then the exemptions."""
    seen: set[tuple[str, str]] = set()
    containers = []
    for row in view.rows:
        where = f"{row.node} " if view.several_nodes else ""  # "gpu-a 0:1": nodes repeat indexes
        for h in row.holders:
            if (row.node, h.container_id) in seen or h.user != view.user_filter:
                continue
            seen.add((row.node, h.container_id))
            stop_at, kind = h.stop
            containers.append(
                {
                    "container": h.container,
                    "node": row.node,
                    "device": f"{where}{row.index} ({row.profile or 'full GPU'})",
                    "next_stop": {"kind": kind, "at": stop_at} if stop_at is not None else None,
                    "keep_alive": bool(h.keep_alive),
                    "keep_alive_until": keep_alive_until.get(h.container_id),
                }
            )
    return {
        "user": view.user_filter,
        "containers": containers,
        "exemptions": [
            {"from": sorted(e.kinds), "until": e.until.timestamp() if e.until else None,
             "reason": e.reason}
            for e in exemptions
        ],
    }  # fmt: skip


def in_force_lines(document: Mapping[str, Any], *, now: float, tz: tzinfo | None = None) -> str:
    """The text under the table: one line per container, one per exemption."""
    lines = [f"In force for {document['user']}:"]
    for c in document["containers"]:
        parts = []
        stop = c["next_stop"]
        if stop is None:
            parts.append("no stop scheduled")
        else:
            when = f"{format_clock(stop['at'], now, tz)} ({relative(stop['at'], now)})"
            parts.append(f"next {KINDS.get(stop['kind'], stop['kind'])} {when}")
        if c["keep_alive_until"] is not None:
            until = c["keep_alive_until"]
            parts.append(
                f"keep-alive until {format_clock(until, now, tz)} ({relative(until, now)})"
            )
        elif c["keep_alive"]:
            parts.append("keep-alive on")
        lines.append(f"  {c['container']} on {c['device']}: " + "; ".join(parts))
    for e in document["exemptions"]:
        until = f" until {format_clock(e['until'], now, tz)}" if e["until"] else ""
        kinds = ", ".join(k.replace("_", " ") for k in e["from"])
        lines.append(f"  exempt from {kinds}{until} ({e['reason']})")
    if len(lines) == 1:
        lines.append("  nothing: no GPU container and no exemption")
    return "\n".join(lines) + "\n"
