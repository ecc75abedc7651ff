"""The sim backend: stable topology, activity from the state file, never guessing idle."""

from __future__ import annotations

import json

import pytest
import yaml

from ds01.cgroups import container_id_from_cgroup
from ds01.cli import main as ds01_main
from ds01.gpu import DeviceSample, GpuProcess, device_is_busy, open_backend, resolve_device_spec
from ds01.gpu.sim import (
    SimBackend,
    SimTopologyError,
    load_topology,
    topology_devices,
    topology_for_node,
)

CID = "8283d9fa9194ce26c70d7b798b7452e54d175d9217fc90901779bbbdf72a6d4f"


def test_default_topology_is_balanced_h200_plus_whole_gpu(sim_inventory):
    assert [(d.index, d.kind, d.profile) for d in sim_inventory] == [
        ("0:0", "mig", "3g.71gb"),
        ("0:1", "mig", "2g.35gb"),
        ("0:2", "mig", "1g.18gb"),
        ("0:3", "mig", "1g.18gb"),
        ("1", "gpu", ""),
    ]
    assert all(d.device_uuid.startswith("MIG-") for d in sim_inventory[:4])
    assert sim_inventory[4].device_uuid.startswith("GPU-")
    assert load_topology(None) == sim_inventory  # stable across loads


def test_topology_errors_name_the_entry():
    with pytest.raises(SimTopologyError, match=r"gpus\[0\]\.mig\[0\]: MIG profile"):
        topology_devices({"gpus": [{"mig": ["big"]}]})
    with pytest.raises(SimTopologyError, match="gpus: must be a non-empty list"):
        topology_devices({})


def test_activity_and_processes_from_state_file(sim_backend, sim_state, sim_inventory):
    mig = sim_inventory[2]
    sim_state.set_device(mig.index, activity=0.8, pids=[4242])
    sim_state.set_device(sim_inventory[4].device_uuid, busy=False)
    reading = sim_backend.read()
    sample = reading.samples[mig.device_uuid]
    assert sample.activity_ratio == 0.8 and sample.process_pids == (4242,)
    assert reading.samples[sim_inventory[4].device_uuid].activity_ratio == 0.0
    assert reading.errors == ()


def test_failed_device_is_counted_and_busy(sim_backend, sim_state, sim_inventory):
    sim_state.set_device("0:1", fail=True)
    reading = sim_backend.read()
    sample = reading.samples[sim_inventory[1].device_uuid]
    assert reading.errors == ("sim_device",)
    assert device_is_busy(sample, busy_threshold=0.05)


def test_mig_without_gpm_falls_back_to_processes(tmp_path, sim_state):
    devices = topology_devices({"gpus": [{"model": "NVIDIA A100", "mig": ["3g.40gb"]}]})
    backend = SimBackend(devices, sim_state.path, gpm_gpu_indexes=set())
    sample = backend.read().samples[devices[0].device_uuid]
    assert sample.activity_ratio is None
    assert not device_is_busy(sample, busy_threshold=0.05)
    sim_state.set_device("0:0", pids=[77])
    assert device_is_busy(backend.read().samples[devices[0].device_uuid], busy_threshold=0.05)


@pytest.mark.parametrize(
    ("sample", "busy"),
    [
        (DeviceSample("d", 0.04, (), 0), False),
        (DeviceSample("d", 0.05, (), 0), True),
        (DeviceSample("d", None, (GpuProcess(1),), 0), True),
        (DeviceSample("d", None, (), 0), False),
        (DeviceSample("d", None, None, None), True),
        (DeviceSample("d", None, (), 0, ("nvmlDeviceGetComputeRunningProcesses",)), True),
        (None, True),
    ],
)
def test_busy_verdict(sample, busy):
    assert device_is_busy(sample, busy_threshold=0.05) is busy


def test_resolve_device_spec(sim_inventory):
    uuids = [d.device_uuid for d in sim_inventory]
    assert resolve_device_spec("0", sim_inventory) == tuple(uuids[:4])
    assert resolve_device_spec("0:3,1", sim_inventory) == (uuids[3], uuids[4])
    assert resolve_device_spec(sim_inventory[0].gpu_uuid, sim_inventory) == tuple(uuids[:4])
    assert resolve_device_spec("all", sim_inventory) == tuple(uuids)


def test_open_backend_sim(tmp_path):
    backend = open_backend("sim", sim_state=tmp_path / "s.json")
    assert backend.name == "sim" and len(backend.devices()) == 5
    with pytest.raises(ValueError, match="auto, nvml or sim"):
        open_backend("cuda")


def test_sim_gpu_cli_sets_state(tmp_path, capsys):
    state = tmp_path / "state.json"
    assert (
        ds01_main(["sim-gpu", "--state-file", str(state), "set", "0:2", "--busy", "--pid", "9"])
        == 0
    )
    rows = json.loads(capsys.readouterr().out)
    row = next(r for r in rows if r["index"] == "0:2")
    assert row["activity"] == 1.0 and row["pids"] == [9]


@pytest.mark.parametrize(
    "text",
    [
        f"12:memory:/docker/{CID}\n0::/docker/{CID}\n",
        f"0::/system.slice/docker-{CID}.scope\n",
        f"1:name=systemd:/kubepods/burstable/pod1/docker-{CID}.scope\n",
        f"0::/../docker/{CID}\n",
    ],
)
def test_container_id_from_cgroup_forms(text):
    assert container_id_from_cgroup(text) == CID


def test_no_container_in_cgroup():
    assert container_id_from_cgroup("0::/user.slice/user-0.slice/session-1.scope\n") is None


def test_each_node_gets_its_own_device_uuids():
    default = {d.device_uuid for d in load_topology(None)}
    per_node = {
        node: {d.device_uuid for d in topology_devices(yaml.safe_load(topology_for_node(node)))}
        for node in ("gpu-a", "gpu-b")
    }
    assert per_node["gpu-a"].isdisjoint(per_node["gpu-b"])
    assert per_node["gpu-a"].isdisjoint(default)
    assert len(per_node["gpu-a"]) == len(default)  # the same layout, other names
    again = {d.device_uuid for d in topology_devices(yaml.safe_load(topology_for_node("gpu-a")))}
    assert again == per_node["gpu-a"]  # stable: a restarted node keeps its UUIDs
