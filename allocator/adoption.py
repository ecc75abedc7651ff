"""Adoption: may a GPU container that bypassed the allocator be given an allocation? (pure)

A container that reached dockerd another way (root on the real socket) is adopted when every
device it uses is in the inventory and free, and its owner stays within quota; otherwise it
stays unmanaged (the rules warn, then stop it) and its devices are still never granted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ds01.gpu import GpuDevice

from .lifecycle import ContainerView
from .model import BOUND, Allocation

UNKNOWN_OWNER = "unknown"


@dataclass(frozen=True)
class AdoptionDecision:
    """Adopt (with these devices) or not; `reason` says why, for the log and the tests."""

    adopt: bool
    reason: str
    devices: tuple[str, ...] = ()


def first_come(views: Iterable[ContainerView]) -> list[ContainerView]:
    """Containers in start order: the first to start on a device is the one that may keep it."""
    return sorted(views, key=lambda v: (v.started_at or 0.0, v.container_id))


def foreign_containers(
    running: Iterable[ContainerView], live: Iterable[Allocation]
) -> list[ContainerView]:
    """Running GPU containers that no live allocation is bound to, in start order."""
    bound = {a.container_id for a in live if a.container_id}
    return first_come(v for v in running if v.gpu_devices and v.container_id not in bound)


def decide_adoption(
    *,
    container: ContainerView,
    live: Sequence[Allocation],
    inventory: Sequence[GpuDevice],
    earlier: Iterable[ContainerView],
    group: str,
    max_gpus: int | None,
    allow_full_gpu: bool,
    waiting: int = 0,
    holding_elsewhere: int = 0,
) -> AdoptionDecision:
    """Adopt when the owner is known, every device is in the inventory, held by no allocation,
    used by no container that started before this one, and the owner stays within quota
    (`holding_elsewhere`: the owner's devices on other nodes of a cluster store)."""
    devices = container.gpu_devices
    user = container.user
    if not user or user == UNKNOWN_OWNER:
        return AdoptionDecision(False, "owner unknown (no ds01.user label, no /home/<user> path)")
    known = {d.device_uuid: d for d in inventory}
    for uuid in devices:
        if uuid not in known:
            return AdoptionDecision(False, f"device {uuid} not in inventory")
    holders = {u: a for a in live for u in a.devices}
    for uuid in devices:
        alloc = holders.get(uuid)
        if alloc is not None:
            return AdoptionDecision(
                False, f"device {uuid} held by allocation {alloc.id} of {alloc.user}"
            )
    used = _used_by(earlier, exclude=container.container_id)
    for uuid in devices:
        other = used.get(uuid)
        if other is not None:
            return AdoptionDecision(
                False, f"device {uuid} used by running container {other.name or other.short_id}"
            )
    if not allow_full_gpu and any(known[u].kind == "gpu" for u in devices):
        return AdoptionDecision(False, f"group {group} may not hold a whole GPU")
    holding = sum(len(a.devices) for a in live if a.user == user) + holding_elsewhere
    if max_gpus is not None and holding + waiting + len(devices) > max_gpus:
        waits = f" and waits for {waiting}" if waiting else ""
        return AdoptionDecision(
            False,
            f"{user} holds {holding} of {max_gpus}{waits}; the container needs {len(devices)}",
        )
    limit = "no limit" if max_gpus is None else str(max_gpus)
    return AdoptionDecision(
        True, f"devices free; {user} holds {holding} of {limit}", tuple(devices)
    )


def adopted_allocation(
    *,
    container: ContainerView,
    devices: tuple[str, ...],
    group: str,
    allocation_id: str,
    now: float,
) -> Allocation:
    """The bound allocation an adopted container gets: its owner, its type, its devices."""
    return Allocation(
        id=allocation_id,
        user=container.user,
        group=group,
        devices=devices,
        state=BOUND,
        created_at=now,
        container_id=container.container_id,
        container_name=container.name,
        container_type=container.container_type,
    )


def _used_by(views: Iterable[ContainerView], *, exclude: str) -> Mapping[str, ContainerView]:
    used: dict[str, ContainerView] = {}
    for view in views:
        if view.container_id != exclude:
            for uuid in view.gpu_devices:
                used.setdefault(uuid, view)
    return used
