"""Pure: the `--json` document of a view (fields documented in docs/gpu-status.md)."""

from __future__ import annotations

import math
from typing import Any

from .view import DeviceRow, FreeCount, Holder, StatusView

JSON_VERSION = 1  # new fields may be added; a removal or a change of meaning bumps it


def _time(value: float | None) -> float | None:
    """JSON has no infinity: a deadline of +Inf ("never") and an unknown one are both null."""
    return value if value is not None and math.isfinite(value) else None


def _holder_json(h: Holder) -> dict[str, Any]:
    stop_at, reason = h.stop
    return {
        "container_id": h.container_id,
        "container": h.container,
        "user": h.user,
        "group": h.group,
        "type": h.type,
        "managed": h.managed,
        "allocation": h.allocation,
        "busy": h.busy,
        "last_busy": _time(h.last_busy),
        "idle_for_seconds": h.idle_for,
        "idle_deadline": _time(h.idle_deadline),
        "runtime_deadline": _time(h.runtime_deadline),
        "keep_alive": h.keep_alive,
        "stop_at": stop_at,
        "stop_reason": reason,
    }


def _row_json(row: DeviceRow) -> dict[str, Any]:
    stop_at, reason = row.stop
    allocation = row.allocation
    return {
        "node": row.node,
        "index": row.index,
        "device_uuid": row.device_uuid,
        "gpu_uuid": row.gpu_uuid,
        "gpu_index": row.gpu_index,
        "kind": row.kind,
        "model": row.model,
        "profile": row.profile,
        "memory_used_bytes": None if row.memory_used is None else int(row.memory_used),
        "memory_total_bytes": None if row.memory_total is None else int(row.memory_total),
        "activity_ratio": row.activity,
        "busy": row.busy,
        "processes": row.processes,
        "state": row.state,
        "users": list(row.users),
        "containers": [_holder_json(h) for h in row.holders],
        "allocation": None
        if allocation is None
        else {
            "allocation": allocation.allocation,
            "user": allocation.user,
            "group": allocation.group,
            "state": allocation.state,
            "container_id": allocation.container_id,
        },
        "idle_for_seconds": row.idle_for,
        "stop_at": stop_at,
        "stop_reason": reason,
    }


def view_to_json(view: StatusView, *, prometheus_url: str) -> dict[str, Any]:
    return {
        "version": JSON_VERSION,
        "prometheus_url": prometheus_url,
        "time": view.now,
        "user_filter": view.user_filter,
        "node_filter": view.node_filter,
        "exporter": {"last_collect": view.last_collect, "stale": view.stale},
        "warnings": list(view.warnings),
        "devices": [_row_json(row) for row in view.rows],
        "summary": {
            "free": _free_json(view.free),
            "queue_length": view.queue_length,
            "nodes": [
                {"node": n.node, "free": _free_json(n.free), "queue_length": n.queue_length}
                for n in view.nodes
            ],
        },
    }


def _free_json(free: tuple[FreeCount, ...]) -> list[dict[str, Any]]:
    return [
        {"profile": f.profile, "model": f.model, "kind": f.kind, "free": f.free, "total": f.total}
        for f in free
    ]
