"""Pure: turn one Prometheus answer into rows (one per GPU / MIG instance) and a summary line."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..durations import format_duration
from .query import RawStatus, Sample

DEFAULT_STALE_AFTER = 60.0
ALLOCATION_STATES = {"reserved": "reserved", "bound": "allocated", "held": "held"}


@dataclass(frozen=True)
class Holder:
    """A running container that holds the device, with its clocks and deadlines."""

    container_id: str
    container: str
    user: str
    group: str
    type: str
    managed: bool | None
    allocation: str
    busy: bool | None
    last_busy: float | None
    idle_for: float | None  # 0 while busy; None when unknown
    idle_deadline: float | None  # math.inf = never (keep-alive or exempt); None = unknown
    runtime_deadline: float | None
    keep_alive: bool | None

    @property
    def stop(self) -> tuple[float | None, str | None]:
        """The earlier of the two deadlines and its reason; (None, None) when none is finite."""
        candidates = [
            (deadline, reason)
            for deadline, reason in (
                (self.idle_deadline, "idle"),
                (self.runtime_deadline, "max_runtime"),
            )
            if deadline is not None and math.isfinite(deadline)
        ]
        if not candidates:
            return None, None
        return min(candidates)


@dataclass(frozen=True)
class AllocationHold:
    """An allocation that holds a device without a running container on it."""

    allocation: str
    user: str
    group: str
    state: str  # reserved | bound | held
    container_id: str


@dataclass(frozen=True)
class DeviceRow:
    index: str
    device_uuid: str
    gpu_uuid: str
    gpu_index: int
    kind: str
    model: str
    profile: str
    memory_used: float | None
    memory_total: float | None
    activity: float | None
    busy: bool | None
    processes: int | None
    holders: tuple[Holder, ...]
    allocation: AllocationHold | None
    state: str  # free | in_use | reserved | allocated | held
    node: str = ""  # the scrape target's `node` label; "" where Prometheus adds none

    @property
    def users(self) -> tuple[str, ...]:
        names = [h.user for h in self.holders]
        if self.allocation is not None:
            names.append(self.allocation.user)
        return tuple(dict.fromkeys(n for n in names if n))

    @property
    def idle_for(self) -> float | None:
        known = [h.idle_for for h in self.holders if h.idle_for is not None]
        return min(known) if known else None

    @property
    def stop(self) -> tuple[float | None, str | None]:
        stops = [h.stop for h in self.holders if h.stop[0] is not None]
        return min(stops) if stops else (None, None)


@dataclass(frozen=True)
class FreeCount:
    profile: str
    model: str
    kind: str
    free: int
    total: int

    @property
    def label(self) -> str:
        return (
            self.profile
            if self.kind == "mig" and self.profile
            else f"full {short_model(self.model)}"
        )


@dataclass(frozen=True)
class NodeSummary:
    """One node's free devices and allocator queue (a cluster shows one line per node)."""

    node: str
    free: tuple[FreeCount, ...]
    queue_length: int | None


@dataclass(frozen=True)
class StatusView:
    now: float
    rows: tuple[DeviceRow, ...]
    free: tuple[FreeCount, ...]
    queue_length: int | None
    last_collect: float | None
    stale: bool
    warnings: tuple[str, ...]
    user_filter: str | None = None
    nodes: tuple[NodeSummary, ...] = ()  # one per node seen, sorted by name
    node_filter: str | None = None

    @property
    def several_nodes(self) -> bool:
        """More than one node in the data: rows and summaries are grouped per node."""
        return len(self.nodes) > 1


def short_model(model: str) -> str:
    return model.removeprefix("NVIDIA ").strip() or "GPU"


def _node(labels: Mapping[str, str]) -> str:
    return labels.get("node", "")


def _by_container(samples: Iterable[Sample]) -> dict[tuple[str, str], float]:
    """Keyed by (node, container id): two nodes may report the same id."""
    return {(_node(s.labels), s.labels.get("container_id", "")): s.value for s in samples}


def _flag(value: float | None) -> bool | None:
    return None if value is None or math.isnan(value) else value >= 0.5


def _number(text: str | None) -> int:
    match = re.match(r"\d+", text or "")
    return int(match.group()) if match else 0


def _index(labels: Mapping[str, str]) -> tuple[str, tuple[int, int, int]]:
    """The index a user reads (`0`, `0:1`) and a sort key: GPU order, whole GPU first."""
    gpu = _number(labels.get("gpu_index"))
    if labels.get("index"):
        shown = labels["index"]
    elif labels.get("kind") == "mig":
        # The contract carries gi_id; the exporter may add mig_index (NVML's device index).
        mig = labels.get("mig_index")
        shown = f"{gpu}:{mig}" if mig else f"{gpu}:gi{labels.get('gi_id', '?')}"
    else:
        shown = str(gpu)
    minor = _number(labels.get("mig_index") or labels.get("gi_id"))
    return shown, (gpu, 0 if labels.get("kind") != "mig" else 1, minor)


def _holders(raw: RawStatus, now: float) -> dict[tuple[str, str], list[Holder]]:
    """Holders per (node, device UUID): the sim topology repeats its UUIDs on every node."""
    busy = _by_container(raw.named("ds01_container_busy"))
    last_busy = _by_container(raw.named("ds01_container_last_busy_timestamp_seconds"))
    idle_deadline = _by_container(raw.named("ds01_container_idle_deadline_timestamp_seconds"))
    runtime = _by_container(raw.named("ds01_container_runtime_deadline_timestamp_seconds"))
    keep_alive = _by_container(raw.named("ds01_container_keep_alive"))
    info = {
        (_node(s.labels), s.labels.get("container_id", "")): s.labels
        for s in raw.named("ds01_container_info")
    }
    by_device: dict[tuple[str, str], list[Holder]] = {}
    seen: set[tuple[str, str, str]] = set()
    for sample in raw.named("ds01_container_gpu_device"):
        labels = sample.labels
        node = _node(labels)
        cid, device = labels.get("container_id", ""), labels.get("device_uuid", "")
        key = (node, cid)
        if (node, cid, device) in seen or sample.value == 0:
            continue
        seen.add((node, cid, device))
        is_busy = _flag(busy.get(key))
        last = last_busy.get(key)
        if is_busy:
            idle_for: float | None = 0.0
        elif last is not None and math.isfinite(last):
            idle_for = max(0.0, now - last)
        else:
            idle_for = None
        extra = info.get(key, {})
        managed = extra.get("managed")
        by_device.setdefault((node, device), []).append(
            Holder(
                container_id=cid,
                container=labels.get("container", "") or cid[:12],
                user=labels.get("user", ""),
                group=labels.get("group", ""),
                type=labels.get("type", ""),
                managed=None if managed is None else managed == "true",
                allocation=extra.get("allocation", ""),
                busy=is_busy,
                last_busy=last,
                idle_for=idle_for,
                idle_deadline=idle_deadline.get(key),
                runtime_deadline=runtime.get(key),
                keep_alive=_flag(keep_alive.get(key)),
            )
        )
    for holders in by_device.values():
        holders.sort(key=lambda h: (h.container, h.container_id))
    return by_device


def _allocations(raw: RawStatus) -> dict[tuple[str, str], AllocationHold]:
    found: dict[tuple[str, str], AllocationHold] = {}
    for sample in sorted(
        raw.named("ds01_allocation_device"), key=lambda s: s.labels.get("allocation", "")
    ):
        if sample.value == 0:
            continue
        labels = sample.labels
        found.setdefault(
            (_node(labels), labels.get("device_uuid", "")),
            AllocationHold(
                allocation=labels.get("allocation", ""),
                user=labels.get("user", ""),
                group=labels.get("group", ""),
                state=labels.get("state", ""),
                container_id=labels.get("container_id", ""),
            ),
        )
    return found


def _device_rows(raw: RawStatus, now: float) -> list[DeviceRow]:
    def per_device(name: str) -> dict[tuple[str, str], float]:
        return {
            (_node(s.labels), s.labels.get("device_uuid", "")): s.value for s in raw.named(name)
        }

    used = per_device("ds01_gpu_device_memory_used_bytes")
    total = per_device("ds01_gpu_device_memory_total_bytes")
    activity = per_device("ds01_gpu_device_activity_ratio")
    busy = per_device("ds01_gpu_device_busy")
    processes = per_device("ds01_gpu_device_processes")
    holders = _holders(raw, now)
    allocations = _allocations(raw)
    rows: dict[tuple[str, str], tuple[tuple[str, int, int, int], DeviceRow]] = {}
    for sample in raw.named("ds01_gpu_device_info"):
        labels = sample.labels
        node = _node(labels)
        uuid = (node, labels.get("device_uuid", ""))
        if uuid in rows:
            continue
        shown, key = _index(labels)
        held = tuple(holders.get(uuid, ()))
        allocation = allocations.get(uuid)
        if held:
            state = "in_use"
        elif allocation is not None:
            state = ALLOCATION_STATES.get(allocation.state, "allocated")
        else:
            state = "free"
        procs = processes.get(uuid)
        rows[uuid] = (
            (node, *key),
            DeviceRow(
                index=shown,
                device_uuid=uuid[1],
                gpu_uuid=labels.get("gpu_uuid", ""),
                gpu_index=key[0],
                kind=labels.get("kind", ""),
                model=labels.get("model", ""),
                profile=labels.get("profile", ""),
                memory_used=used.get(uuid),
                memory_total=total.get(uuid),
                activity=activity.get(uuid),
                busy=_flag(busy.get(uuid)),
                processes=None if procs is None else int(procs),
                holders=held,
                allocation=None if held else allocation,
                state=state,
                node=node,
            ),
        )
    return [row for _, row in sorted(rows.values(), key=lambda item: item[0])]


def _profile_order(item: FreeCount) -> tuple[Any, ...]:
    return (item.kind != "mig", _number(item.profile), item.profile, item.model)


def _free_counts(raw: RawStatus, rows: list[DeviceRow], node: str | None) -> tuple[FreeCount, ...]:
    """Free devices per (profile, model, kind) from the recording rule, rows if it is absent;
    for one node, or summed over all when `node` is None."""
    rows = [row for row in rows if node is None or row.node == node]
    totals: dict[tuple[str, str, str], int] = {}
    for row in rows:
        key = (row.profile, row.model, row.kind)
        totals[key] = totals.get(key, 0) + 1
    rule = raw.named("ds01:devices_free:count")
    if rule or raw.named("ds01:devices_allocated:count"):
        free: dict[tuple[str, str, str], int] = {}
        for s in rule:
            if node is not None and _node(s.labels) != node:
                continue
            key = (s.labels.get("profile", ""), s.labels.get("model", ""), s.labels.get("kind", ""))
            free[key] = free.get(key, 0) + int(s.value)
    else:
        free = {}
        for row in rows:
            if row.state == "free":
                key = (row.profile, row.model, row.kind)
                free[key] = free.get(key, 0) + 1
    keys = set(totals) | set(free)
    counts = [
        FreeCount(p, m, k, free.get((p, m, k), 0), totals.get((p, m, k), 0)) for p, m, k in keys
    ]
    return tuple(sorted(counts, key=_profile_order))


def _queue_length(raw: RawStatus, node: str | None) -> int | None:
    queue = [
        s
        for s in raw.named("ds01_allocator_queue_length")
        if node is None or _node(s.labels) == node
    ]
    return int(sum(s.value for s in queue)) if queue else None


def _freshness(
    samples: Iterable[Sample], *, now: float, stale_after: float, has_rows: bool
) -> tuple[float | None, bool, list[str]]:
    """One exporter's last collection, whether it is stale, and the warnings that say so."""
    collected = [s.value for s in samples if math.isfinite(s.value)]
    last_collect = max(collected) if collected else None
    if last_collect is None:
        return (
            None,
            True,
            [
                "no exporter data in Prometheus (ds01_exporter_last_collect_timestamp_seconds "
                "is absent): is the exporter running and scraped?"
            ],
        )
    if last_collect <= 0:
        return last_collect, True, ["the exporter has not completed a collection yet"]
    if now - last_collect > stale_after:
        return (
            last_collect,
            True,
            [
                f"exporter data is stale: last collection {format_duration(now - last_collect)} "
                "ago; the figures below may be out of date"
            ],
        )
    return last_collect, False, [] if has_rows else ["the exporter reports no GPU devices"]


def build_view(
    raw: RawStatus,
    *,
    now: float,
    user: str | None = None,
    node: str | None = None,
    stale_after: float = DEFAULT_STALE_AFTER,
) -> StatusView:
    """Rows for every device (or only those `user` holds, on `node`), summaries and warnings;
    with several nodes, per node: each exporter's freshness is judged on its own."""
    all_rows = _device_rows(raw, now)
    seen = {row.node for row in all_rows} | {_node(s.labels) for s in raw.last_collect}
    seen |= {_node(s.labels) for s in raw.named("ds01_allocator_queue_length")}
    names = sorted(seen) if node is None else [node]
    per_node = len(names) > 1 or node is not None
    warnings: list[str] = []
    if node is not None and node not in seen:
        known = ", ".join(sorted(n for n in seen if n)) or "none labelled"
        warnings.append(f"no node {node!r} in Prometheus' data (nodes: {known})")
    last_collects: list[float] = []
    stale = node is not None and node not in seen  # no data at all for the asked node
    for name in (names or [""]) if node is None else [n for n in names if n in seen]:
        at, node_stale, said = _freshness(
            [s for s in raw.last_collect if not per_node or _node(s.labels) == name],
            now=now,
            stale_after=stale_after,
            has_rows=any(not per_node or row.node == name for row in all_rows),
        )
        stale = stale or node_stale
        if at is not None:
            last_collects.append(at)
        prefix = f"node {name}: " if len(names) > 1 else ""
        warnings.extend(prefix + line for line in said)
    rows = [row for row in all_rows if node is None or row.node == node]
    if user is not None:
        rows = [row for row in rows if user in row.users]
    return StatusView(
        now=now,
        rows=tuple(rows),
        free=_free_counts(raw, all_rows, node),
        queue_length=_queue_length(raw, node),
        last_collect=min(last_collects) if last_collects else None,
        stale=stale,
        warnings=tuple(warnings),
        user_filter=user,
        nodes=tuple(
            NodeSummary(name, _free_counts(raw, all_rows, name), _queue_length(raw, name))
            for name in names
            if name in seen
        ),
        node_filter=node,
    )
