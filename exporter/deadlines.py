"""Pure decisions: is a container busy, is its keep-alive fresh, when are its deadlines.

No I/O here: the collector gathers the facts and these functions decide, so every rule of
"what counts as idle" is tested directly.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

INF = math.inf


@dataclass(frozen=True)
class Deadline:
    """A Unix timestamp (or +Inf) and why it has that value."""

    at: float
    reason: str  # "timeout" | "keep_alive" | "exempt"


def keep_alive_fresh(*, mtime: float | None, now: float, max_age: float) -> bool:
    """The file exists and was touched less than `max_age` ago (a future mtime counts as now)."""
    if mtime is None:
        return False
    return max(0.0, now - mtime) < max_age


def idle_deadline(
    *, last_busy: float, idle_timeout: float, idle_exempt: bool, keep_alive: bool
) -> Deadline:
    """Last busy + idle timeout; +Inf under an idle exemption or a fresh keep-alive file."""
    if idle_exempt:
        return Deadline(INF, "exempt")
    if keep_alive:
        return Deadline(INF, "keep_alive")
    return Deadline(last_busy + idle_timeout, "timeout")


def runtime_deadline(*, first_start: float, max_runtime: float, runtime_exempt: bool) -> Deadline:
    """First start + max runtime; +Inf under a runtime exemption."""
    if runtime_exempt:
        return Deadline(INF, "exempt")
    return Deadline(first_start + max_runtime, "timeout")


def container_busy(
    *,
    container_id: str,
    devices: Iterable[str],
    device_busy: Mapping[str, bool],
    holders: Mapping[str, int],
    process_owners: Mapping[str, frozenset[str] | None],
) -> bool:
    """Busy when a device it holds is busy; on a device several containers share, only the
    containers with a process on it count as busy.

    `device_busy` lacks a device that could not be sampled (counted busy: never call idle what
    could not be measured); `process_owners[d]` is None when the device's processes are unknown.
    """
    for device in devices:
        if not device_busy.get(device, True):
            continue
        if holders.get(device, 1) <= 1:
            return True
        owners = process_owners.get(device)
        if owners is None or container_id in owners:
            return True
    return False
