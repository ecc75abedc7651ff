"""Snapshot in, metrics out: names, labels and values of DESIGN.md's Metrics table."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from ds01.containers import ContainerFacts
from exporter.health import ErrorCounters
from exporter.metrics import SnapshotCollector
from exporter.snapshot import ContainerState, DeviceState, Snapshot, snapshot_json

CID = "a" * 64


@pytest.fixture
def snapshot(sim_inventory) -> Snapshot:
    mig, whole = sim_inventory[0], sim_inventory[4]
    facts = ContainerFacts(
        CID,
        "train",
        "pytorch:2",
        "ds01",
        "alice",
        True,
        "a-1",
        (mig.device_uuid,),
        True,
        100.0,
        90.0,
    )
    return Snapshot(
        timestamp=5000.0,
        duration=0.012,
        backend="sim",
        devices=(
            DeviceState(mig, 0.75, 1, 2**30, True, 4990.0),
            DeviceState(whole, None, None, None, True, 4000.0),
        ),
        containers=(
            ContainerState(
                facts,
                "researcher",
                True,
                100.0,
                4990.0,
                True,
                math.inf,
                "keep_alive",
                172900.0,
                "timeout",
            ),
        ),
    )


def registry_for(snapshot, errors=None) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(
        SnapshotCollector(
            lambda: snapshot, errors or ErrorCounters(), version="0.1.0", backend="sim"
        )
    )
    return registry


def test_device_series(snapshot, sim_inventory):
    reg = registry_for(snapshot)
    mig, whole = sim_inventory[0], sim_inventory[4]
    info = {
        "device_uuid": mig.device_uuid,
        "gpu_uuid": mig.gpu_uuid,
        "gpu_index": "0",
        "index": "0:0",
        "gi_id": str(mig.gi_id),
        "profile": "3g.71gb",
        "model": "NVIDIA H200",
        "kind": "mig",
    }
    assert reg.get_sample_value("ds01_gpu_device_info", info) == 1
    whole_info = {**info, "device_uuid": whole.device_uuid, "gpu_uuid": whole.gpu_uuid}
    whole_info.update(gpu_index="1", index="1", gi_id="", profile="", kind="gpu")
    assert reg.get_sample_value("ds01_gpu_device_info", whole_info) == 1
    dev = {"device_uuid": mig.device_uuid}
    assert reg.get_sample_value("ds01_gpu_device_activity_ratio", dev) == 0.75
    assert reg.get_sample_value("ds01_gpu_device_processes", dev) == 1
    assert reg.get_sample_value("ds01_gpu_device_memory_used_bytes", dev) == 2**30
    assert reg.get_sample_value("ds01_gpu_device_memory_total_bytes", dev) == mig.memory_total_bytes
    assert reg.get_sample_value("ds01_gpu_device_busy", dev) == 1
    assert reg.get_sample_value("ds01_gpu_device_last_busy_timestamp_seconds", dev) == 4990.0


def test_unmeasurable_values_are_absent_not_zero(snapshot, sim_inventory):
    reg = registry_for(snapshot)
    whole = {"device_uuid": sim_inventory[4].device_uuid}
    for name in (
        "ds01_gpu_device_activity_ratio",
        "ds01_gpu_device_processes",
        "ds01_gpu_device_memory_used_bytes",
    ):
        assert reg.get_sample_value(name, whole) is None
    assert reg.get_sample_value("ds01_gpu_device_busy", whole) == 1


def test_container_series(snapshot, sim_inventory):
    reg = registry_for(snapshot)
    key = {
        "container_id": CID,
        "container": "train",
        "user": "alice",
        "group": "researcher",
        "type": "ds01",
    }
    info = {**key, "image": "pytorch:2", "managed": "true", "allocation": "a-1"}
    assert reg.get_sample_value("ds01_container_info", info) == 1
    device = {**key, "device_uuid": sim_inventory[0].device_uuid}
    assert reg.get_sample_value("ds01_container_gpu_device", device) == 1
    assert reg.get_sample_value("ds01_container_start_time_seconds", key) == 100.0
    assert reg.get_sample_value("ds01_container_busy", key) == 1
    assert reg.get_sample_value("ds01_container_last_busy_timestamp_seconds", key) == 4990.0
    assert reg.get_sample_value("ds01_container_idle_deadline_timestamp_seconds", key) == math.inf
    assert (
        reg.get_sample_value("ds01_container_runtime_deadline_timestamp_seconds", key) == 172900.0
    )
    assert reg.get_sample_value("ds01_container_keep_alive", key) == 1
    assert b"ds01_container_idle_deadline_timestamp_seconds{" in generate_latest(reg)
    assert b"} +Inf\n" in generate_latest(reg)


def test_health_series_and_error_counters_start_at_zero(snapshot):
    errors = ErrorCounters()
    errors.add("docker", 2)
    reg = registry_for(snapshot, errors)
    assert (
        reg.get_sample_value("ds01_exporter_build_info", {"version": "0.1.0", "backend": "sim"})
        == 1
    )
    assert reg.get_sample_value("ds01_exporter_last_collect_timestamp_seconds") == 5000.0
    assert reg.get_sample_value("ds01_exporter_collect_duration_seconds") == 0.012
    counts = {
        source: reg.get_sample_value("ds01_exporter_collect_errors_total", {"source": source})
        for source in ("docker", "gpu", "keepalive", "state")
    }
    assert counts == {"docker": 2, "gpu": 0, "keepalive": 0, "state": 0}


def test_before_the_first_collection_no_device_or_container_series():
    reg = registry_for(None)
    text = generate_latest(reg).decode()
    assert "ds01_gpu_device_busy{" not in text and "ds01_container_info{" not in text
    assert reg.get_sample_value("ds01_exporter_last_collect_timestamp_seconds") == 0.0


def test_describe_does_not_collect():
    def explode():
        raise AssertionError("registration must not read the snapshot")

    registry = CollectorRegistry()
    collector = SnapshotCollector(explode, ErrorCounters(), version="v", backend="sim")
    registry.register(collector)
    described = {family.name for family in collector.describe()}
    assert {"ds01_container_info", "ds01_gpu_device_busy", "ds01_exporter_build_info"} <= described


def test_every_help_text_is_a_sentence(snapshot):
    text = generate_latest(registry_for(snapshot)).decode()
    helps = [line for line in text.splitlines() if line.startswith("# HELP ds01_")]
    assert len(helps) == 19
    assert all(line.endswith(".") for line in helps)


def test_state_json_uses_null_for_infinity(snapshot):
    doc = snapshot_json(snapshot)
    container = doc["containers"][0]
    assert container["idle_deadline"] is None and container["idle_deadline_reason"] == "keep_alive"
    assert container["runtime_deadline"] == 172900.0
    assert doc["devices"][1]["activity_ratio"] is None
    assert snapshot_json(None) == {"collected_at": None, "devices": [], "containers": []}
