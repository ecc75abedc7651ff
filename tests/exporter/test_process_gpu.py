"""GPU use from the devices' process lists: a process on a device is a device held."""

from __future__ import annotations

import pytest
import requests

from ds01.containers import ContainerFacts
from ds01.gpu import DeviceSample
from ds01.gpu.model import GpuProcess
from exporter.process_gpu import devices_by_process, with_seen_devices
from tests.exporter.helpers import WAIT, value
from tests.harness.waiting import eventually

UNMANAGED = (
    'ds01_container_gpu_device{{container_id="{cid}"}} '
    'unless on(container_id, device_uuid) ds01_allocation_device{{state="bound"}}'
)


def sample(uuid: str, *pids: int) -> DeviceSample:
    return DeviceSample(uuid, 0.5, tuple(GpuProcess(p) for p in pids), 0)


def facts(devices: tuple[str, ...] = ()) -> ContainerFacts:
    return ContainerFacts("c" * 64, "job", "img", "docker", "alice", False, "", devices, True,
                          1.0, 1.0)  # fmt: skip


def test_each_container_gets_the_devices_its_processes_are_on():
    owners = {10: "a" * 64, 11: "a" * 64, 20: "b" * 64, 30: None}
    samples = {
        "MIG-1": sample("MIG-1", 10, 20),
        "MIG-2": sample("MIG-2", 11, 30),
        "MIG-3": DeviceSample("MIG-3", None, None, None),  # not measurable: nothing seen
    }

    seen = devices_by_process(samples, owners.get)

    assert seen == {"a" * 64: ("MIG-1", "MIG-2"), "b" * 64: ("MIG-1",)}


def test_seen_devices_add_to_the_configured_ones():
    assert with_seen_devices(facts(("MIG-1",)), ("MIG-2", "MIG-1")).gpu_devices == (
        "MIG-1",
        "MIG-2",
    )
    same = facts(("MIG-1",))
    assert with_seen_devices(same, ("MIG-1",)) is same
    assert with_seen_devices(facts(), ("MIG-9",)).has_gpu


@pytest.fixture
def unmanaged_query(prometheus_factory):
    """Start a Prometheus on the exporter; a function: container id -> unmanaged device UUIDs."""

    def start(exporter):
        target = exporter.url.removeprefix("http://")
        prometheus = prometheus_factory(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n  - job_name: ds01-exporter\n"
            f"    static_configs: [{{targets: ['{target}']}}]\n"
        )

        def devices(cid: str) -> set[str]:
            query = {"query": UNMANAGED.format(cid=cid)}
            reply = requests.get(f"{prometheus.url}/api/v1/query", params=query, timeout=5)
            return {r["metric"]["device_uuid"] for r in reply.json()["data"]["result"]}

        return devices

    return start


@pytest.mark.integration
def test_a_dev_nvidia0_bind_mount_with_a_process_on_a_sim_device_is_unmanaged(
    exporter_factory, containers, sim_state, sim_inventory, tmp_path, unmanaged_query
):
    node = tmp_path / "nvidia0"
    node.touch()  # stands in for the device node: what counts is where it is mounted
    target = sim_inventory[2]
    box = containers(volumes={str(node): {"bind": "/dev/nvidia0", "mode": "rw"}})
    sim_state.set_device(target.index, busy=True, pids=[box.attrs["State"]["Pid"]])
    exporter = exporter_factory()
    unmanaged = unmanaged_query(exporter)

    found = eventually(
        lambda: target.device_uuid in (d := unmanaged(box.id)) and d, WAIT, "the unmanaged join"
    )

    assert target.device_uuid in found


@pytest.mark.integration
@pytest.mark.parametrize("how", ["device cgroup rule", "nothing in its config"])
def test_a_process_on_a_device_makes_any_container_a_gpu_container(
    exporter_factory, containers, sim_state, sim_inventory, how
):
    extra = {"device_cgroup_rules": ["c 195:* rmw"]} if how == "device cgroup rule" else {}
    box = containers(**extra)
    target = sim_inventory[1]
    sim_state.set_device(target.index, busy=True, pids=[box.attrs["State"]["Pid"]])
    exporter = exporter_factory()

    samples = eventually(
        lambda: (
            (s := exporter.scrape())
            and value(
                s, "ds01_container_gpu_device", container_id=box.id, device_uuid=target.device_uuid
            )
            and s
        ),
        WAIT,
        "the device the process runs on, held by the container",
    )

    assert value(samples, "ds01_container_info", container_id=box.id) == 1


@pytest.mark.integration
def test_a_process_on_a_device_beside_the_allocated_one_holds_that_device_too(
    exporter_factory, containers, sim_state, sim_inventory
):
    mine, other = sim_inventory[0], sim_inventory[3]
    box = containers(gpus=[mine.device_uuid])
    sim_state.set_device(other.index, busy=True, pids=[box.attrs["State"]["Pid"]])
    exporter = exporter_factory()

    def held() -> set[str] | None:
        samples = exporter.scrape()
        devices = {
            s.labels["device_uuid"]
            for s in samples
            if s.name == "ds01_container_gpu_device" and s.labels["container_id"] == box.id
        }
        return devices if other.device_uuid in devices else None

    assert eventually(held, WAIT, "both devices") == {mine.device_uuid, other.device_uuid}
