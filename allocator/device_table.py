"""The device table (`GET /v1/devices`, `container devices`): each device with its holder.

Pure: the caller reads the inventory, the live allocations and the running GPU containers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ds01.gpu import GpuReading

from .lifecycle import ContainerView
from .model import Allocation


def device_rows(
    reading: GpuReading, live: Iterable[Allocation], in_use: Mapping[str, ContainerView]
) -> list[dict[str, Any]]:
    """Every device with its holder and state (free, busy, reserved, bound, held, vanished).

    `busy`: compute processes, or a running container that no allocation gives it. A device
    a live allocation holds that the inventory no longer lists is shown `vanished`.
    """
    holders = {uuid: a for a in live for uuid in a.devices}
    rows = []
    for device in reading.devices:
        alloc = holders.pop(device.device_uuid, None)
        sample = reading.samples.get(device.device_uuid)
        pids = list(sample.process_pids) if sample else []
        foreign = None if alloc else in_use.get(device.device_uuid)
        holder = alloc or foreign
        rows.append(
            {
                "device_uuid": device.device_uuid,
                "index": device.index,
                "kind": device.kind,
                "profile": device.profile,
                "model": device.model,
                "state": alloc.state if alloc else ("busy" if pids or foreign else "free"),
                "allocation": alloc.id if alloc else "",
                "user": holder.user if holder else "",
                "container_id": holder.container_id if holder else "",
                "container_name": (
                    alloc.container_name if alloc else foreign.name if foreign else ""
                ),
                "pids": pids,
            }
        )
    for gone_uuid, alloc in holders.items():
        rows.append(
            {
                "device_uuid": gone_uuid,
                "index": "",
                "kind": "",
                "profile": "",
                "model": "",
                "state": "vanished",
                "allocation": alloc.id,
                "user": alloc.user,
                "container_id": alloc.container_id,
                "container_name": alloc.container_name,
                "pids": [],
            }
        )
    return rows
