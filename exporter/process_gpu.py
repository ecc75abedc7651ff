"""GPU use seen in the devices' process lists, whatever the container's config says.

A container can reach a device without asking for it in a way its config shows (a bind mount of
/dev/nvidia*, a device cgroup rule plus mknod, --privileged): the process list of each device,
mapped to containers through /proc/<pid>/cgroup, is the fact it cannot hide. A device it has a
process on is a device it holds; with no bound allocation for it, the rules' unmanaged join
fires.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace

from ds01.containers import ContainerFacts
from ds01.gpu import DeviceSample

PidOwner = Callable[[int], str | None]


def devices_by_process(
    samples: Mapping[str, DeviceSample], pid_owner: PidOwner
) -> dict[str, tuple[str, ...]]:
    """container id -> the devices it has a compute process on (in device order)."""
    seen: dict[str, list[str]] = {}
    for device_uuid, sample in samples.items():
        if sample is None or sample.processes is None:
            continue
        for pid in sample.process_pids:
            owner = pid_owner(pid)
            if owner and device_uuid not in seen.setdefault(owner, []):
                seen[owner].append(device_uuid)
    return {owner: tuple(devices) for owner, devices in seen.items()}


def with_seen_devices(facts: ContainerFacts, seen: tuple[str, ...]) -> ContainerFacts:
    """The container's devices from its config plus those its processes were seen on."""
    extra = tuple(d for d in seen if d not in facts.gpu_devices)
    if not extra:
        return facts
    return replace(facts, gpu_devices=facts.gpu_devices + extra)
