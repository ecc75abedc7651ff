"""The shared table: each case is a fake-NVML scenario and the facts both backends must report.

The sim backend is fed an equivalent topology and state derived from the same facts, so one
table proves the NVML backend and the sim backend agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ds01.gpu import GpuReading, device_is_busy

BUSY_THRESHOLD = 0.05
H100 = "NVIDIA H100 80GB HBM3"
A100_80 = "NVIDIA A100-SXM4-80GB"
A100_40 = "NVIDIA A100-SXM4-40GB"
H200 = "NVIDIA H200"
GIB = 1024**3


@dataclass(frozen=True)
class Fact:
    """One device as a user sees it: identity, size, processes, activity and the busy verdict."""

    index: str
    kind: str
    device_uuid: str
    gpu_uuid: str
    model: str
    memory_total: int
    profile: str = ""
    gi_id: int | None = None
    ci_id: int | None = None
    pids: tuple[int, ...] = ()
    memory_used: int | None = 0
    activity: float | None = None
    busy: bool = False


@dataclass(frozen=True)
class Case:
    id: str
    scenario: str
    facts: tuple[Fact, ...]
    gpm_gpus: frozenset[int] = frozenset()
    variant: str = "modern"

    def sim_topology(self) -> dict[str, Any]:
        """The sim topology (YAML data) with the same devices."""
        gpus: dict[int, dict[str, Any]] = {}
        for fact in self.facts:
            gpu_index = int(fact.index.split(":")[0])
            gpu = gpus.setdefault(
                gpu_index,
                {
                    "index": gpu_index,
                    "uuid": fact.gpu_uuid,
                    "model": fact.model,
                    "memory": fact.memory_total,
                    "gpm": gpu_index in self.gpm_gpus,
                },
            )
            if fact.kind == "mig":
                gpu.setdefault("mig", []).append(
                    {
                        "profile": fact.profile,
                        "uuid": fact.device_uuid,
                        "gi_id": fact.gi_id,
                        "ci_id": fact.ci_id,
                        "mig_index": int(fact.index.split(":")[1]),
                        "memory": fact.memory_total,
                    }
                )
        return {"gpus": list(gpus.values())}

    def sim_state(self) -> dict[str, dict[str, Any]]:
        """The sim state file's devices: the same activity, processes and memory."""
        return {
            f.device_uuid: {
                "activity": f.activity or 0.0,
                "pids": list(f.pids),
                "memory_used": f.memory_used,
            }
            for f in self.facts
        }


def facts_of(reading: GpuReading) -> tuple[Fact, ...]:
    """The facts a reading reports, in inventory order."""
    facts = []
    for d in reading.devices:
        sample = reading.samples[d.device_uuid]
        activity = sample.activity_ratio
        facts.append(
            Fact(
                index=d.index,
                kind=d.kind,
                device_uuid=d.device_uuid,
                gpu_uuid=d.gpu_uuid,
                model=d.model,
                memory_total=d.memory_total_bytes,
                profile=d.profile,
                gi_id=d.gi_id,
                ci_id=d.ci_id,
                pids=sample.process_pids,
                memory_used=sample.memory_used_bytes,
                activity=None if activity is None else round(activity, 6),
                busy=device_is_busy(sample, busy_threshold=BUSY_THRESHOLD),
            )
        )
    return tuple(facts)


def _mig(gpu: str, model: str, slot: int, uuid: str, profile: str, gi: int, mem: int, **kw: Any):
    return Fact(f"0:{slot}", "mig", uuid, gpu, model, mem, profile, gi, 0, **kw)


H100_GPU = "GPU-5c1b8e7a-0000-4000-8000-000000000100"
A100_GPU = "GPU-a100a100-0000-4000-8000-000000000200"
OLD_GPU = "GPU-a100a100-0000-4000-8000-000000000400"
H200_GPUS = ("GPU-h200h200-0000-4000-8000-000000000300", "GPU-h200h200-0000-4000-8000-000000000301")
OLD_DRIVER_FACTS = (
    _mig(OLD_GPU, A100_40, 1, "MIG-a100a100-0000-4000-8000-000000000401", "3g.20gb", 2,
         20937965568, pids=(9001, 4000000, 9003), memory_used=3 * GIB, busy=True),
    _mig(OLD_GPU, A100_40, 6, "MIG-a100a100-0000-4000-8000-000000000402", "1g.5gb", 14,
         5100273664),
)  # fmt: skip

CASES = (
    Case(
        "h100-mig-gpm",
        "h100_mig_gpm.txt",
        (
            _mig(H100_GPU, H100, 0, "MIG-0a7f5d10-0000-4000-8000-000000000101", "3g.40gb", 2,
                 42278584320, pids=(4242,), memory_used=8 * GIB, activity=0.875, busy=True),
            _mig(H100_GPU, H100, 1, "MIG-0a7f5d10-0000-4000-8000-000000000102", "2g.20gb", 3,
                 20937965568, activity=0.0),
            # a process holds memory but GPM says nothing runs: idle
            _mig(H100_GPU, H100, 3, "MIG-0a7f5d10-0000-4000-8000-000000000103", "1g.10gb", 9,
                 10468982784, pids=(5151,), memory_used=GIB, activity=0.0),
            _mig(H100_GPU, H100, 5, "MIG-0a7f5d10-0000-4000-8000-000000000104", "1g.10gb", 10,
                 10468982784, pids=(6161, 6162), memory_used=2 * GIB, activity=0.45, busy=True),
        ),
        gpm_gpus=frozenset({0}),
    ),
    Case(
        "a100-mig-no-gpm",
        "a100_mig_nogpm.txt",
        (  # no activity measurable: processes decide
            _mig(A100_GPU, A100_80, 0, "MIG-a100a100-0000-4000-8000-000000000201", "3g.40gb", 1,
                 40 * GIB, pids=(7001,), memory_used=4 * GIB, busy=True),
            _mig(A100_GPU, A100_80, 2, "MIG-a100a100-0000-4000-8000-000000000202", "2g.20gb", 5,
                 20 * GIB),
            _mig(A100_GPU, A100_80, 4, "MIG-a100a100-0000-4000-8000-000000000203", "1g.10gb", 13,
                 10 * GIB, pids=(7002,), memory_used=GIB // 2, busy=True),
        ),
    ),
    Case(
        "two-whole-gpus",
        "two_whole_gpus.txt",
        (
            Fact("0", "gpu", H200_GPUS[0], H200_GPUS[0], H200, 150754820096, pids=(8001,),
                 memory_used=20 * GIB, activity=0.73, busy=True),
            Fact("1", "gpu", H200_GPUS[1], H200_GPUS[1], H200, 150754820096, activity=0.0),
        ),
    ),
    Case("old-driver-no-v3", "old_driver.txt", OLD_DRIVER_FACTS, variant="no_v3"),
    Case("old-driver-v1-only", "old_driver.txt", OLD_DRIVER_FACTS, variant="v1_only"),
)  # fmt: skip
