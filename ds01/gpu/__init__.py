"""GPU backends behind one interface: NVML on a real host, sim everywhere else."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable

from .model import DeviceSample, GpuBackend, GpuDevice, GpuProcess, GpuReading, device_is_busy

__all__ = [
    "DeviceSample",
    "GpuBackend",
    "GpuDevice",
    "GpuProcess",
    "GpuReading",
    "device_is_busy",
    "open_backend",
    "resolve_device_spec",
]

logger = logging.getLogger(__name__)


def open_backend(
    kind: str = "auto",
    *,
    sim_topology: str | os.PathLike[str] | None = None,
    sim_state: str | os.PathLike[str] | None = None,
) -> GpuBackend:
    """`auto` = NVML when it initialises, else sim (and say so): never silently no GPUs."""
    if kind not in ("auto", "nvml", "sim"):
        raise ValueError(f"gpu backend must be auto, nvml or sim, got {kind!r}")
    if kind in ("auto", "nvml"):
        from .nvml import NvmlBackend, NvmlUnavailable

        try:
            return NvmlBackend()
        except NvmlUnavailable as exc:
            if kind == "nvml":
                raise
            logger.info("gpu backend: NVML unavailable (%s); using the sim backend", exc)
    from .sim import SimBackend

    return SimBackend.from_files(sim_topology, sim_state)


def resolve_device_spec(spec: str, inventory: Iterable[GpuDevice]) -> tuple[str, ...]:
    """Device UUIDs named by an NVIDIA_VISIBLE_DEVICES-style list (`all`, `0`, `0:1`, UUIDs).

    A GPU index in MIG mode means all its MIG instances; a name that matches nothing is kept
    as given, so GPU access is still visible even when the device is unknown.
    """
    devices = tuple(inventory)
    result: list[str] = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        if item == "all":
            matched = [d.device_uuid for d in devices]
        elif item.startswith(("GPU-", "MIG-")):
            by_parent = [d.device_uuid for d in devices if d.gpu_uuid == item and d.kind == "mig"]
            matched = by_parent or [item]
        elif ":" in item:
            matched = [d.device_uuid for d in devices if d.kind == "mig" and d.index == item]
        elif item.isdigit():
            matched = [d.device_uuid for d in devices if d.gpu_index == int(item)]
        else:
            matched = []
        for uuid in matched or [item]:
            if uuid not in result:
                result.append(uuid)
    return tuple(result)
