"""The immutable picture a collection cycle publishes; scrapes and /api/state only read it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ds01.containers import ContainerFacts
from ds01.gpu import GpuDevice


@dataclass(frozen=True)
class DeviceState:
    device: GpuDevice
    activity_ratio: float | None  # None where activity cannot be measured
    processes: int | None  # None when the process list could not be read
    memory_used_bytes: int | None
    busy: bool
    last_busy: float


@dataclass(frozen=True)
class ContainerState:
    facts: ContainerFacts
    group: str
    busy: bool
    first_start: float
    last_busy: float
    keep_alive: bool
    idle_deadline: float  # +Inf when keep-alive is fresh or an idle exemption applies
    idle_deadline_reason: str
    runtime_deadline: float  # +Inf under a runtime exemption
    runtime_deadline_reason: str
    keep_alive_until: float | None = None  # when a fresh keep-alive file goes stale


@dataclass(frozen=True)
class Snapshot:
    timestamp: float  # when the collection that made it ran (Unix seconds)
    duration: float  # wall seconds that collection took
    backend: str
    devices: tuple[DeviceState, ...]
    containers: tuple[ContainerState, ...]


def _time(value: float) -> float | None:
    """JSON has no infinity: +Inf becomes null (the matching *_reason says why)."""
    return None if math.isinf(value) else value


def snapshot_json(snapshot: Snapshot | None) -> dict[str, Any]:
    """The /api/state document."""
    if snapshot is None:
        return {"collected_at": None, "devices": [], "containers": []}
    return {
        "collected_at": snapshot.timestamp,
        "collect_duration_seconds": snapshot.duration,
        "backend": snapshot.backend,
        "devices": [
            {
                "device_uuid": d.device.device_uuid,
                "gpu_uuid": d.device.gpu_uuid,
                "index": d.device.index,
                "kind": d.device.kind,
                "profile": d.device.profile,
                "model": d.device.model,
                "activity_ratio": d.activity_ratio,
                "processes": d.processes,
                "memory_used_bytes": d.memory_used_bytes,
                "memory_total_bytes": d.device.memory_total_bytes,
                "busy": d.busy,
                "last_busy": d.last_busy,
            }
            for d in snapshot.devices
        ],
        "containers": [
            {
                "container_id": c.facts.container_id,
                "container": c.facts.name,
                "user": c.facts.user,
                "group": c.group,
                "type": c.facts.type,
                "image": c.facts.image,
                "managed": c.facts.managed,
                "allocation": c.facts.allocation,
                "devices": list(c.facts.gpu_devices),
                "busy": c.busy,
                "start_time": c.first_start,
                "last_busy": c.last_busy,
                "keep_alive": c.keep_alive,
                "keep_alive_until": c.keep_alive_until,
                "idle_deadline": _time(c.idle_deadline),
                "idle_deadline_reason": c.idle_deadline_reason,
                "runtime_deadline": _time(c.runtime_deadline),
                "runtime_deadline_reason": c.runtime_deadline_reason,
            }
            for c in snapshot.containers
        ],
    }
