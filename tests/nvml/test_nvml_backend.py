"""The NVML backend against a fake libnvidia-ml.so.1: MIG, GPM, old drivers, failing calls."""

from __future__ import annotations

import pytest
import yaml

from ds01.gpu import GpuProcess, device_is_busy
from ds01.gpu.sim import SimBackend, SimStateFile
from tests.nvml.table import BUSY_THRESHOLD, CASES, GIB, H200_GPUS, Case, facts_of

H100_DEVICES = [
    "MIG-0a7f5d10-0000-4000-8000-000000000101",
    "MIG-0a7f5d10-0000-4000-8000-000000000102",
    "MIG-0a7f5d10-0000-4000-8000-000000000103",
    "MIG-0a7f5d10-0000-4000-8000-000000000104",
]


def busy(reading, uuid: str) -> bool:
    return device_is_busy(reading.samples[uuid], busy_threshold=BUSY_THRESHOLD)


@pytest.mark.parametrize("backend", ["nvml", "sim"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_both_backends_report_the_tables_facts(case: Case, backend, run_nvml, tmp_path):
    if backend == "nvml":
        run = run_nvml(case.scenario, variant=case.variant)
        assert run.backend == "nvml"
        reading = run.reads[0]
    else:
        topology = tmp_path / "topology.yaml"
        topology.write_text(yaml.safe_dump(case.sim_topology()))
        state = tmp_path / "state.json"
        SimStateFile(state).save(case.sim_state())
        reading = SimBackend.from_files(topology, state).read()
    assert facts_of(reading) == case.facts
    assert reading.errors == ()  # NOT_SUPPORTED utilisation on MIG is expected, not an error


def test_processes_carry_host_pids_and_their_memory(run_nvml):
    reading = run_nvml("h100_mig_gpm.txt").reads[0]
    assert reading.samples[H100_DEVICES[3]].processes == (
        GpuProcess(6161, GIB),
        GpuProcess(6162, GIB),
    )


@pytest.mark.parametrize("variant", ["no_v3", "v1_only"])
def test_old_driver_process_layouts_read_exactly(variant, run_nvml):
    run = run_nvml("old_driver.txt", variant=variant)
    sample = run.reads[0].samples["MIG-a100a100-0000-4000-8000-000000000401"]
    # a wrong struct layout shows up here as garbage PIDs or memory
    assert sample.processes == (
        GpuProcess(9001, GIB),
        GpuProcess(4000000, None),  # NVML_VALUE_NOT_AVAILABLE
        GpuProcess(9003, 2 * GIB),
    )
    assert "driver lacks nvmlDeviceGetComputeRunningProcesses_v3" in run.log
    assert run.reads[0].errors == ()


def test_gpm_activity_follows_each_interval_without_sleeping(run_nvml, scenario):
    busy_then_idle = scenario(
        "h100_mig_gpm.txt",
        "mig gpu=0 index=0 uuid=MIG-0a7f5d10-0000-4000-8000-000000000101 gi=2 ci=0 "
        "mem_total=42278584320 gpm_graphics=0 gpm_sm=0 name=NVIDIA H100 80GB HBM3 MIG 3g.40gb",
    )
    run = run_nvml("h100_mig_gpm.txt", busy_then_idle, "h100_mig_gpm.txt")
    activity = [r.samples[H100_DEVICES[0]].activity_ratio for r in run.reads]
    assert activity == [0.875, 0.0, 0.875]
    assert [busy(r, H100_DEVICES[0]) for r in run.reads] == [True, False, True]


def test_mig_reconfiguration_between_reads_changes_the_inventory(run_nvml, scenario):
    # drop instance 0:1 (GI 3) and create one at the free sparse index 6
    path = scenario("h100_mig_gpm.txt")
    lines = [ln for ln in path.read_text().splitlines() if "000000000102" not in ln]
    lines.append(
        "mig gpu=0 index=6 uuid=MIG-0a7f5d10-0000-4000-8000-000000000105 gi=13 ci=0 "
        "mem_total=10468982784 gpm_graphics=60 name=NVIDIA H100 80GB HBM3 MIG 1g.10gb"
    )
    path.write_text("\n".join(lines) + "\n")
    run = run_nvml("h100_mig_gpm.txt", path, path)
    second, third = run.reads[1], run.reads[2]
    assert [d.index for d in second.devices] == ["0:0", "0:3", "0:5", "0:6"]
    assert run.inventories[1] == tuple(d.device_uuid for d in second.devices)
    new = "MIG-0a7f5d10-0000-4000-8000-000000000105"
    # a new instance has no GPM interval yet: processes decide, then GPM does
    assert second.samples[new].activity_ratio is None
    assert third.samples[new].activity_ratio == pytest.approx(0.6)
    assert second.errors == third.errors == ()


def test_injected_failures_are_counted_survived_and_never_idle(run_nvml):
    reading = run_nvml("failures.txt").reads[0]
    s = reading.samples
    lost_gpm = "MIG-e0e0e0e0-0000-4000-8000-000000000501"
    no_procs = "MIG-e0e0e0e0-0000-4000-8000-000000000502"
    no_util = "GPU-e0e0e0e0-0000-4000-8000-000000000510"
    procs_lost = "MIG-e0e0e0e0-0000-4000-8000-000000000521"
    mem_lost = "MIG-e0e0e0e0-0000-4000-8000-000000000522"
    assert sorted(reading.errors) == sorted(
        [
            "nvmlGpmMigSampleGet:UNKNOWN",
            "nvmlDeviceGetComputeRunningProcesses_v3:NOT_SUPPORTED",
            "nvmlDeviceGetUtilizationRates:NOT_SUPPORTED",
            "nvmlDeviceGetComputeRunningProcesses_v3:GPU_IS_LOST",
            "nvmlDeviceGetMemoryInfo:GPU_IS_LOST",
            "nvmlDeviceGetHandleByIndex:GPU_IS_LOST",
        ]
    )
    assert s[lost_gpm].failed_calls == ("nvmlGpmMigSampleGet:UNKNOWN",)
    assert s[lost_gpm].activity_ratio is None and busy(reading, lost_gpm)
    assert s[no_procs].processes is None
    assert s[no_procs].activity_ratio == 0.0  # GPM still measured it idle
    assert s[no_util].activity_ratio is None and busy(reading, no_util)
    assert s[procs_lost].processes is None and busy(reading, procs_lost)
    assert s[mem_lost].memory_used_bytes is None
    assert s[mem_lost].failed_calls == ("nvmlDeviceGetMemoryInfo:GPU_IS_LOST",)
    # the lost GPU 3 was never seen: it is missing, not idle; everything else is there
    assert [d.index for d in reading.devices] == ["0:0", "0:2", "1", "2:0", "2:1"]


@pytest.mark.parametrize("error", ["GPU_IS_LOST", "UNKNOWN", "NOT_SUPPORTED"])
def test_a_known_gpu_that_fails_stays_listed_and_busy(error, run_nvml, scenario):
    lost = scenario("two_whole_gpus.txt", f"fail call=nvmlDeviceGetUUID device=1 error={error}")
    run = run_nvml("two_whole_gpus.txt", lost)
    before, after = run.reads
    assert not busy(before, H200_GPUS[1])
    assert [d.device_uuid for d in after.devices] == list(H200_GPUS)
    assert after.samples[H200_GPUS[1]].failed_calls == (f"nvmlDeviceGetUUID:{error}",)
    assert busy(after, H200_GPUS[1])
    assert after.errors == (f"nvmlDeviceGetUUID:{error}",)


def test_a_failing_device_count_keeps_every_known_device_busy(run_nvml, scenario):
    broken = scenario("h100_mig_gpm.txt", "fail call=nvmlDeviceGetCount_v2 error=UNKNOWN")
    run = run_nvml("h100_mig_gpm.txt", broken, "h100_mig_gpm.txt")
    assert [d.device_uuid for d in run.reads[1].devices] == H100_DEVICES
    assert run.reads[1].errors == ("nvmlDeviceGetCount:UNKNOWN",)
    assert all(busy(run.reads[1], uuid) for uuid in H100_DEVICES)
    assert run.reads[2].errors == ()
    assert not busy(run.reads[2], H100_DEVICES[1])


def test_gpm_support_query_failure_makes_mig_activity_unknown(run_nvml, scenario):
    broken = scenario(
        "h100_mig_gpm.txt", "fail call=nvmlGpmQueryDeviceSupport device=0 error=GPU_IS_LOST"
    )
    reading = run_nvml(broken).reads[0]
    assert reading.errors == ("nvmlGpmQueryDeviceSupport:GPU_IS_LOST",)  # counted once
    for uuid in H100_DEVICES:
        assert reading.samples[uuid].activity_ratio is None
        assert busy(reading, uuid)


def test_nvml_that_cannot_initialise_is_unavailable(run_nvml, scenario):
    no_driver = scenario("two_whole_gpus.txt", "init error=DRIVER_NOT_LOADED")
    run = run_nvml(no_driver)
    assert run.unavailable == "nvmlInit failed: DRIVER_NOT_LOADED"


def test_auto_uses_nvml_when_it_initialises_and_sim_otherwise(run_nvml, scenario):
    assert run_nvml("two_whole_gpus.txt", kind="auto").backend == "nvml"
    no_driver = scenario("two_whole_gpus.txt", "init error=DRIVER_NOT_LOADED")
    run = run_nvml(no_driver, kind="auto")
    assert run.backend == "sim"
    assert "NVML unavailable (nvmlInit failed: DRIVER_NOT_LOADED); using the sim backend" in run.log
