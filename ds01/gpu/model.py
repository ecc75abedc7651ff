"""GPU facts shared by both backends: devices (whole GPUs or MIG instances) and their samples."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class GpuDevice:
    """One schedulable device: a whole GPU (not in MIG mode) or one MIG instance."""

    device_uuid: str  # GPU-… for a whole GPU, MIG-… for a MIG instance
    gpu_uuid: str  # the parent GPU
    gpu_index: int
    kind: str  # "gpu" | "mig"
    model: str
    memory_total_bytes: int
    profile: str = ""  # e.g. "3g.71gb"; "" for a whole GPU
    gi_id: int | None = None
    ci_id: int | None = None
    mig_index: int | None = None  # NVML's (sparse) MIG device index under the parent

    @property
    def index(self) -> str:
        """The index a user types: `0` for a GPU, `0:1` for MIG device 1 of GPU 0."""
        if self.kind == "mig":
            return f"{self.gpu_index}:{self.mig_index}"
        return str(self.gpu_index)


@dataclass(frozen=True)
class GpuProcess:
    pid: int  # host PID
    used_memory_bytes: int | None = None


@dataclass(frozen=True)
class DeviceSample:
    """What one sampling pass learned about one device; None means "could not be measured"."""

    device_uuid: str
    activity_ratio: float | None
    processes: tuple[GpuProcess, ...] | None
    memory_used_bytes: int | None
    failed_calls: tuple[str, ...] = ()

    @property
    def process_pids(self) -> tuple[int, ...]:
        return tuple(p.pid for p in self.processes or ())


@dataclass(frozen=True)
class GpuReading:
    """One sampling pass over the whole inventory."""

    devices: tuple[GpuDevice, ...]
    samples: dict[str, DeviceSample] = field(default_factory=dict)
    errors: tuple[str, ...] = ()  # one entry per failed backend call, e.g. "nvmlDeviceGetUUID"
    timestamp: float = 0.0


class GpuBackend(Protocol):
    """The interface both backends implement; `read()` never raises for per-device failures."""

    name: str

    def devices(self) -> tuple[GpuDevice, ...]: ...

    def read(self) -> GpuReading: ...

    def close(self) -> None: ...


def device_is_busy(sample: DeviceSample | None, *, busy_threshold: float) -> bool:
    """The idleness verdict: never call idle what could not be measured."""
    if sample is None:
        return True
    if sample.activity_ratio is not None:
        return sample.activity_ratio >= busy_threshold
    if sample.failed_calls or sample.processes is None:
        return True
    return len(sample.processes) > 0
