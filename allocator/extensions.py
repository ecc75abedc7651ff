"""Self-service deadline extensions: the records and the pure decision on a request.

A user moves the runtime (or idle) deadline of their own GPU container within the bounds of
their group's `extensions:` policy; the allocator records each grant durably and writes the
totals to a file the exporter adds to the deadlines it publishes.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ds01.durations import format_duration
from ds01.policy_model import ExtensionBounds

KINDS = ("runtime", "idle")


@dataclass(frozen=True)
class Extension:
    """One granted extension of one container's deadline."""

    container_id: str
    container_name: str
    allocation_id: str
    user: str
    kind: str  # runtime | idle
    seconds: float
    granted_at: float

    def to_json(self) -> dict[str, object]:
        return {
            "container_id": self.container_id,
            "container_name": self.container_name,
            "allocation_id": self.allocation_id,
            "user": self.user,
            "kind": self.kind,
            "seconds": self.seconds,
            "granted_at": self.granted_at,
        }


@dataclass(frozen=True)
class ExtensionDecision:
    """Granted or not, and why (the reason is what the user reads)."""

    granted: bool
    reason: str
    details: Mapping[str, object]


def decide_extension(
    *,
    seconds: float,
    bounds: ExtensionBounds,
    group: str,
    earlier: Iterable[Extension],
    others_waiting: int,
) -> ExtensionDecision:
    """Within max_each, max_per_container and max_total of the group, and nobody waiting for
    that device type when the policy says so; the refusal carries the numbers."""
    done = list(earlier)
    used = sum(e.seconds for e in done)
    details: dict[str, object] = {
        "group": group,
        "extensions_used": len(done),
        "max_per_container": bounds.max_per_container,
        "seconds_used": used,
        "max_total": bounds.max_total,
        "max_each": bounds.max_each,
        "requested": seconds,
    }

    def refuse(reason: str) -> ExtensionDecision:
        return ExtensionDecision(False, reason, details)

    if seconds <= 0:
        return refuse("an extension must be longer than 0s")
    if bounds.max_per_container == 0:
        return refuse(f"group {group} may not extend deadlines")
    if bounds.max_each is not None and seconds > bounds.max_each:
        return refuse(
            f"{format_duration(seconds)} is more than one extension may add "
            f"(max_each {format_duration(bounds.max_each)} for group {group})"
        )
    if bounds.max_per_container is not None and len(done) >= bounds.max_per_container:
        return refuse(
            f"this container already has {len(done)} of {bounds.max_per_container} extensions "
            f"(group {group}; {format_duration(used)} added)"
        )
    if bounds.max_total is not None and used + seconds > bounds.max_total:
        left = max(0.0, bounds.max_total - used)
        return refuse(
            f"{format_duration(used)} of {format_duration(bounds.max_total)} already added "
            f"(group {group}): at most {format_duration(left)} more"
        )
    if bounds.refuse_while_queued and others_waiting > 0:
        return refuse(
            f"{others_waiting} request(s) wait in the queue for this device type: "
            "extensions are refused while others wait"
        )
    return ExtensionDecision(True, "granted", details)


def totals(extensions: Iterable[Extension]) -> dict[str, dict[str, float]]:
    """container_id -> {runtime: seconds, idle: seconds}: what the exporter adds."""
    result: dict[str, dict[str, float]] = {}
    for ext in extensions:
        entry = result.setdefault(ext.container_id, {kind: 0.0 for kind in KINDS})
        entry[ext.kind] += ext.seconds
    return result


def write_totals(path: str | os.PathLike[str], extensions: Iterable[Extension]) -> None:
    """Replace the file atomically (write a temporary file, fsync, rename)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    body = json.dumps({"version": 1, "containers": totals(extensions)}, sort_keys=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".extensions.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(body)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
