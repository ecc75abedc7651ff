"""The terminal table: plain text, coloured only when asked (a TTY without NO_COLOR)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import tzinfo
from typing import IO

from ..durations import format_duration, format_stop
from .view import DeviceRow, FreeCount, StatusView, short_model

HEADERS = ("DEV", "PROFILE", "MEMORY", "ACTIVITY", "CONTAINER", "USER", "IDLE FOR", "STOPS AT")
SOON = 600.0  # a stop closer than this is shown in red

_CODES = {"red": "31", "green": "32", "yellow": "33", "bold": "1", "dim": "2"}


def use_colour(mode: str, stream: IO[str], env: Mapping[str, str] | None = None) -> bool:
    """`auto`: only on a terminal and only without NO_COLOR (https://no-color.org)."""
    if mode == "always":
        return True
    if mode == "never":
        return False
    environ = os.environ if env is None else env
    if environ.get("NO_COLOR"):
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def _paint(text: str, colour: str | None, enabled: bool) -> str:
    if not enabled or not colour or not text.strip():
        return text
    codes = ";".join(_CODES[c] for c in colour.split("+"))
    return f"\033[{codes}m{text}\033[0m"


def _gib(value: float) -> str:
    return f"{value / 1024**3:.1f}"


def _memory(row: DeviceRow) -> str:
    if row.memory_total is None:
        return "-"
    used = "?" if row.memory_used is None else _gib(row.memory_used)
    return f"{used}/{_gib(row.memory_total)} GiB"


def _activity(row: DeviceRow) -> tuple[str, str | None]:
    shown = "n/a" if row.activity is None else f"{round(row.activity * 100)}%"
    if row.busy is None:
        return shown, None
    if row.busy:
        return f"{shown} busy", None
    # idleness matters only where a container could be stopped for it
    return (f"{shown} idle", "yellow") if row.holders else (shown, None)


def _holder(row: DeviceRow) -> tuple[str, str | None]:
    if row.holders:
        return ", ".join(h.container for h in row.holders), None
    if row.state == "free":
        return "(free)", "green"
    return f"({row.state.replace('_', ' ')})", "yellow"


def _idle(row: DeviceRow) -> tuple[str, str | None]:
    if not row.holders:
        return "", None
    if row.idle_for is None:
        return "?", None
    if row.idle_for == 0:
        return "-", None
    return format_duration(row.idle_for), "yellow"


def _stops(row: DeviceRow, now: float, tz: tzinfo | None) -> tuple[str, str | None]:
    if not row.holders:
        return "", None
    stop_at, reason = row.stop
    if stop_at is None:
        return "never", None
    colour = "red" if stop_at - now < SOON else None
    return format_stop(stop_at, now, reason or "", tz), colour


def _profile(row: DeviceRow) -> str:
    return row.profile if row.kind == "mig" and row.profile else f"full {short_model(row.model)}"


def _cells(row: DeviceRow, now: float, tz: tzinfo | None) -> list[tuple[str, str | None]]:
    return [
        (row.index, None),
        (_profile(row), None),
        (_memory(row), None),
        _activity(row),
        _holder(row),
        (", ".join(row.users) if row.holders or row.allocation else "", None),
        _idle(row),
        _stops(row, now, tz),
    ]


def summary_line(
    view: StatusView, free: tuple[FreeCount, ...] | None = None, queue_length: int | None = -1
) -> str:
    """`Free: … Queue: …` for the whole view, or for one node's figures when given."""
    free = view.free if free is None else free
    queue_length = view.queue_length if queue_length == -1 else queue_length
    shown = " · ".join(f"{f.label} {f.free} of {f.total}" for f in free) or "no devices"
    if queue_length is None:
        queue = "unknown (no allocator metrics)"
    else:
        queue = f"{queue_length} waiting"
    return f"Free: {shown}    Queue: {queue}"


def _no_rows(view: StatusView) -> str:
    if view.user_filter is not None:
        where = f" on node {view.node_filter}" if view.node_filter else ""
        return f"No GPU or MIG device is held by {view.user_filter}{where}."
    if view.node_filter is not None:
        return f"No GPU or MIG device on node {view.node_filter} in Prometheus' current data."
    return "No GPU or MIG device in Prometheus' current data."


def render_table(view: StatusView, *, colour: bool = False, tz: tzinfo | None = None) -> str:
    """The default view: warnings, one row per device, then the summary line; with several
    nodes, a section per node (heading, its rows, its summary), columns aligned across all."""
    lines = [_paint(f"WARNING: {w}", "bold+yellow", colour) for w in view.warnings]
    rows = [(row.node, _cells(row, view.now, tz)) for row in view.rows]
    widths = [len(h) for h in HEADERS]
    for _, cells in rows:
        widths = [max(w, len(text)) for w, (text, _) in zip(widths, cells, strict=True)]
    header = _paint(
        "  ".join(h.ljust(w) for h, w in zip(HEADERS, widths, strict=True)).rstrip(), "bold", colour
    )

    def table(cells_of: list[list[tuple[str, str | None]]]) -> list[str]:
        out = [header]
        for cells in cells_of:
            padded = [
                _paint(text.ljust(w) if i < len(cells) - 1 else text, tone, colour)
                for i, ((text, tone), w) in enumerate(zip(cells, widths, strict=True))
            ]
            out.append("  ".join(padded).rstrip())
        return out

    if not view.several_nodes:
        lines.extend(table([cells for _, cells in rows]) if rows else [_no_rows(view)])
        lines.append(summary_line(view))
        return "\n".join(lines) + "\n"
    for summary in view.nodes:
        mine = [cells for node, cells in rows if node == summary.node]
        if not mine and view.user_filter is not None:
            continue  # --user/--mine: only the nodes where that user holds something
        lines.append(_paint(f"Node {summary.node or '(no node label)'}", "bold", colour))
        lines.extend(table(mine) if mine else ["No GPU or MIG device on this node."])
        lines.append(summary_line(view, summary.free, summary.queue_length))
        lines.append("")
    if not rows:
        lines.append(_no_rows(view))
    lines.append(f"All nodes: {summary_line(view)}")
    return "\n".join(lines) + "\n"
