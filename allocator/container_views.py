"""What `container ls` and `container history` tell users, as pure functions over facts.

Why a container stopped (from the enforcer's record), what is in force now (keep-alive,
exemption, next deadline) and the history lines. Times are the user's local time (the `tz`
argument, None = the process's zone) and humanised ("in 1h 12m", "3m ago").
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import tzinfo
from typing import Any

from ds01.durations import format_clock, format_duration
from ds01.policy import Exemption

KIND_NAMES = {"idle": "idle stop", "runtime": "max runtime stop"}


def relative(ts: float, now: float) -> str:
    """`in 1h 12m`, `3m ago`, `now`."""
    left = ts - now
    if abs(left) < 1:
        return "now"
    return f"in {format_duration(left)}" if left > 0 else f"{format_duration(-left)} ago"


def moment(ts: float, now: float, tz: tzinfo | None = None) -> str:
    """`14:02 (3m ago)` in local time; the day too when it is not today."""
    return f"{format_clock(ts, now, tz)} ({relative(ts, now)})"


@dataclass(frozen=True)
class StopStory:
    """When and why a container stopped, and what its owner can do now."""

    at: float | None
    reason: str  # idle | max_runtime | unmanaged | admin | exited
    why: str
    what_to_do: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "reason": self.reason,
            "why": self.why,
            "what_to_do": list(self.what_to_do),
        }


def stop_story(
    *,
    name: str,
    record: Mapping[str, Any] | None,
    exit_code: int | None,
    finished_at: float | None,
    hold_until: float | None,
    now: float,
    keep_alive_path: str = "/workspace/.keep-alive",
    tz: tzinfo | None = None,
) -> StopStory:
    """The story of a stopped container: the enforcer's stop record when there is one."""
    retire = f"`container retire {name}` frees its GPU now"
    if hold_until is not None and hold_until > now:
        resume = (
            f"`docker start {name}` resumes it: its GPU stays yours until "
            f"{moment(hold_until, now, tz)}"
        )
    else:
        resume = f"`docker start {name}` resumes it if a GPU is free (its hold has ended)"
    if record is None:
        at = finished_at
        code = "" if exit_code is None else f" with code {exit_code}"
        why = f"it exited{code}: its main process ended or someone ran docker/container stop"
        return StopStory(at, "exited", why, (resume, retire))
    at = float(record["time"])
    reason = str(record.get("reason") or "")
    limit = record.get("limit_seconds")
    deadline = record.get("deadline")
    if reason == "idle":
        since = ""
        if isinstance(deadline, float) and isinstance(limit, float):
            since = f" since {moment(deadline - limit, now, tz)}"
        timeout = (
            f", past its idle timeout of {format_duration(limit)}"
            if isinstance(limit, float)
            else ""
        )
        why = f"its GPU was idle{since}{timeout}"
        keep = f"to keep an idle container, `touch {keep_alive_path}` inside it"
        return StopStory(at, reason, why, (resume, retire, keep))
    if reason == "max_runtime":
        span = f" of {format_duration(limit)}" if isinstance(limit, float) else ""
        why = f"it reached its maximum runtime{span}"
        again = "a restart counts from the first start: start a new container to continue"
        return StopStory(at, reason, why, (again, retire))
    if reason == "unmanaged":
        why = "it used a GPU that no ds01 allocation gave it"
        how = "start GPU containers through ds01 (the DOCKER_HOST `ds01 up` prints, or "
        how += "`container deploy`)"
        return StopStory(at, reason, why, (how, retire))
    if reason == "admin":
        why = f"an admin stopped it ({record.get('detail') or 'no reason given'})"
        return StopStory(at, reason, why, (resume, retire))
    return StopStory(at, reason or "stopped", str(record.get("detail") or "stopped"), (retire,))


def last_stop(history: Iterable[Mapping[str, Any]], container_id: str) -> Mapping[str, Any] | None:
    """The newest stop record of one container (records oldest first)."""
    found = None
    for item in history:
        if item.get("kind") == "stop" and item.get("container_id") == container_id:
            found = item
    return found


@dataclass(frozen=True)
class InForce:
    """What applies to a running container now, from the exporter's state and the policy."""

    idle_for: str
    next_stop: str
    next_kind: str | None
    next_at: float | None
    keep_alive_until: float | None
    exemptions: tuple[str, ...]
    next_extended: bool = False  # the next deadline was moved by `container extend`

    def notes(self, now: float, tz: tzinfo | None = None) -> list[str]:
        notes = []
        if self.keep_alive_until is not None:
            notes.append(f"keep-alive until {moment(self.keep_alive_until, now, tz)}")
        notes.extend(self.exemptions)
        return notes

    def to_json(self) -> dict[str, Any]:
        return {
            "next_stop": (
                {"kind": self.next_kind, "at": self.next_at, "extended": self.next_extended}
                if self.next_kind
                else None
            ),
            "keep_alive_until": self.keep_alive_until,
            "exemptions": list(self.exemptions),
        }


def _number(entry: Mapping[str, Any], key: str) -> float | None:
    value = entry.get(key)
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def exemption_texts(exemptions: Sequence[Exemption], now: float, tz: tzinfo | None) -> list[str]:
    texts = []
    for e in exemptions:
        kinds = ", ".join(sorted(k.replace("max_runtime", "max runtime") for k in e.kinds))
        until = f" until {format_clock(e.until.timestamp(), now, tz)}" if e.until else ""
        texts.append(f"exempt from {kinds}{until} ({e.reason})")
    return texts


def in_force(
    entry: Mapping[str, Any] | None,
    *,
    exemptions: Sequence[Exemption] = (),
    now: float,
    tz: tzinfo | None = None,
) -> InForce:
    """Idle time, next deadline with its kind, keep-alive and exemptions of a running one."""
    texts = tuple(exemption_texts(exemptions, now, tz))
    if entry is None:
        return InForce("-", "-", None, None, None, texts)
    idle = "busy" if entry.get("busy") is True else "-"
    last_busy = _number(entry, "last_busy")
    if idle != "busy" and last_busy is not None:
        idle = format_duration(max(0.0, now - last_busy))
    deadlines = [
        (at, kind)
        for at, kind in (
            (_number(entry, "idle_deadline"), "idle"),
            (_number(entry, "runtime_deadline"), "runtime"),
        )
        if at is not None
    ]
    keep = _number(entry, "keep_alive_until") if entry.get("keep_alive") else None
    if not deadlines:
        return InForce(idle, "never", None, None, keep, texts)
    at, kind = min(deadlines)
    extended = entry.get(f"{kind}_deadline_reason") == "extended"
    what = KIND_NAMES[kind] + (", extended" if extended else "")
    text = f"{format_clock(at, now, tz)} ({relative(at, now)}, {what})"
    return InForce(idle, text, kind, at, keep, texts, extended)


def history_rows(
    items: Iterable[Mapping[str, Any]], *, now: float, tz: tzinfo | None = None
) -> list[tuple[str, str, str, str]]:
    """(when, what, container, detail) per history item, for the table."""
    rows = []
    for item in items:
        kind = str(item.get("kind", ""))
        what = kind
        if kind in ("stop", "warning") and item.get("reason"):
            what = f"{kind} ({str(item['reason']).replace('_', ' ')})"
        elif kind in ("wait", "grant"):
            what = f"{kind} {item.get('decision', '')}".strip() if kind == "wait" else kind
        detail = str(item.get("detail") or "")
        if kind == "warning" and item.get("summary"):
            detail = str(item["summary"])  # what the owner was told
        elif kind == "stop":
            detail = detail.split(";")[0]  # why; the rest is the channels' bookkeeping
        rows.append(
            (moment(float(item["time"]), now, tz), what, str(item.get("container") or "-"), detail)
        )
    return rows


def table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )
