"""Classification of inspect data captured from a real dockerd (tests/fixtures/inspect)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ds01.containers import classify, container_owner, container_type, parse_docker_time

INSPECT = Path(__file__).parent.parent / "fixtures" / "inspect"


def inspect(name: str) -> dict:
    return json.loads((INSPECT / f"{name}.json").read_text())


def test_ds01_labelled_mig_container(sim_inventory):
    facts = classify(inspect("gpus_mig"), sim_inventory)
    assert facts.type == "docker"  # allocated by us (managed), made by a plain docker run
    assert facts.user == "alice"
    assert facts.managed is True
    assert facts.allocation == "a-1"
    assert facts.gpu_devices == ("MIG-df54b576-e39a-549f-be90-6e647bd0abce",)
    assert facts.running and facts.started_at and facts.name == "gpus_mig"


def test_gpus_all_resolves_to_every_device(sim_inventory):
    facts = classify(inspect("gpus_all"), sim_inventory)
    assert facts.type == "docker"
    assert set(facts.gpu_devices) == {d.device_uuid for d in sim_inventory}


def test_gpus_count_takes_first_devices(sim_inventory):
    facts = classify(inspect("gpus_count2"), sim_inventory)
    assert facts.gpu_devices == tuple(d.device_uuid for d in sim_inventory[:2])


def test_index_list_resolves_mig_index_and_whole_gpu(sim_inventory):
    facts = classify(inspect("gpus_index_list"), sim_inventory)
    by_index = {d.index: d.device_uuid for d in sim_inventory}
    assert facts.gpu_devices == (by_index["0:2"], by_index["1"])


def test_nvidia_visible_devices_under_runc_is_no_gpu_access(sim_inventory):
    """CUDA images carry NVIDIA_VISIBLE_DEVICES in their image env: under runc, no GPU."""
    facts = classify(inspect("compose_env"), sim_inventory)
    assert (facts.type, facts.user, facts.managed) == ("compose", "bob", False)
    assert facts.gpu_devices == ()
    assert not classify(inspect("compose_env"), sim_inventory, default_runtime="nvidia").has_gpu


@pytest.mark.parametrize(
    ("runtime", "default_runtime"),
    [("nvidia", None), ("nvidia", "runc"), ("", "nvidia"), (None, "nvidia-cdi")],
)
def test_nvidia_visible_devices_counts_under_the_nvidia_runtime(
    sim_inventory, runtime, default_runtime
):
    data = inspect("compose_env")
    data["HostConfig"]["Runtime"] = runtime
    facts = classify(data, sim_inventory, default_runtime=default_runtime)
    assert facts.gpu_devices == (next(d for d in sim_inventory if d.index == "1").device_uuid,)


def test_devcontainer_with_nvidia_runtime_gets_all(sim_inventory):
    facts = classify(inspect("devcontainer_runtime"), sim_inventory)
    assert (facts.type, facts.user) == ("devcontainer", "carol")
    assert len(facts.gpu_devices) == len(sim_inventory)


def test_device_node_and_home_bind_mount(sim_inventory):
    facts = classify(inspect("device_node"), sim_inventory)
    assert facts.user == "alice"
    assert facts.gpu_devices == tuple(d.device_uuid for d in sim_inventory if d.gpu_index == 0)


def test_non_gpu_container_has_no_gpu(sim_inventory):
    facts = classify(inspect("no_gpu"), sim_inventory)
    assert facts.has_gpu is False
    assert facts.user == "alice"


def test_forged_managed_label_only_claims():
    """A label decides the type it claims, nothing more: exemptions never come from labels."""
    assert container_type({"ds01.managed": "true"}) == "docker"
    assert container_type({"ds01.managed": "yes"}) == "docker"


DEV = {"devcontainer.local_folder": "/home/carol/thesis"}
COMPOSE = {"com.docker.compose.project": "exp"}
MANAGED = {"ds01.managed": "true", "ds01.user": "alice", "ds01.allocation": "a-1"}


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ({**MANAGED, "ds01.type": "devcontainer", **DEV}, "devcontainer"),
        ({**MANAGED, "ds01.type": "compose", **COMPOSE}, "compose"),
        ({**MANAGED, "ds01.type": "docker"}, "docker"),
        ({**MANAGED, "ds01.type": "ds01"}, "ds01"),
        ({**DEV, **COMPOSE}, "devcontainer"),
        ({**MANAGED, "ds01.type": "ds01", **DEV}, "devcontainer"),
        ({"ds01.type": "something-else"}, "docker"),
    ],
)
def test_a_container_made_through_our_tools_keeps_the_type_of_its_client(labels, expected):
    assert container_type(labels) == expected


def test_unknown_owner():
    assert container_owner({}, [{"Type": "volume", "Source": "/home/x"}]) == "unknown"


def test_unknown_device_name_is_kept_so_gpu_access_stays_visible(sim_inventory):
    data = inspect("gpus_mig")
    data["HostConfig"]["DeviceRequests"][0]["DeviceIDs"] = ["MIG-not-in-inventory"]
    assert classify(data, sim_inventory).gpu_devices == ("MIG-not-in-inventory",)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-29T16:30:20.123456789Z", 1795969820.123456),
        ("0001-01-01T00:00:00Z", None),
        ("", None),
    ],
)
def test_docker_time(text, expected):
    result = parse_docker_time(text)
    assert result == pytest.approx(expected) if expected else result is None


def _without_gpu_with(**host: object) -> dict:
    data = inspect("no_gpu")
    data["HostConfig"] = {**(data.get("HostConfig") or {}), **host}
    return data


def test_a_dev_nvidia_bind_mount_is_gpu_access(sim_inventory):
    data = inspect("no_gpu")
    data["Mounts"] = [
        *(data.get("Mounts") or []),
        {"Type": "bind", "Source": "/dev/nvidia1", "Destination": "/dev/nvidia1", "RW": True},
    ]
    facts = classify(data, sim_inventory)
    assert facts.gpu_devices == tuple(d.device_uuid for d in sim_inventory if d.gpu_index == 1)


@pytest.mark.parametrize(
    "host",
    [
        {"Privileged": True},
        {"DeviceCgroupRules": ["c 195:* rmw"]},
        {"DeviceCgroupRules": ["a *:* rwm"]},
        {"DeviceCgroupRules": ["c *:* rwm"]},
    ],
    ids=["privileged", "nvidia-major-rule", "all-devices-rule", "all-char-rule"],
)
def test_privileged_or_a_device_rule_for_nvidia_is_access_to_every_device(host, sim_inventory):
    facts = classify(_without_gpu_with(**host), sim_inventory)
    assert set(facts.gpu_devices) == {d.device_uuid for d in sim_inventory}


def test_a_device_rule_for_another_major_is_no_gpu_access(sim_inventory):
    facts = classify(_without_gpu_with(DeviceCgroupRules=["c 10:200 rwm"]), sim_inventory)
    assert not facts.has_gpu


def test_the_stamped_user_is_the_label_as_found():
    data = inspect("gpus_mig")
    assert classify(data, ()).stamped_user == "alice"
    assert classify(inspect("compose_env"), ()).stamped_user is None  # owner from a path only
