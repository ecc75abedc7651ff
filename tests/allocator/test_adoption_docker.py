"""Adoption against the private dockerd: GPU containers started on dockerd directly (real
DeviceRequests, no ds01 labels) next to an allocator that follows that dockerd."""

from __future__ import annotations

import pytest

from allocator.client import AllocatorClient
from allocator.lifecycle import ContainerEvent, ContainerView
from tests.allocator.conftest import WAIT, as_user, write_topology
from tests.harness.containers import remove_container
from tests.harness.waiting import eventually

pytestmark = pytest.mark.integration

ALICE = {"devcontainer.local_folder": "/home/alice/thesis"}  # owner and type from the labels
BOB = {"com.docker.compose.project": "exp", "com.docker.compose.project.working_dir": "/home/bob"}


@pytest.fixture
def direct(allocator_factory, docker_client, short_dir):
    """An allocator on one H200 split into `migs` 1g.18gb devices, following the dockerd."""

    def make(migs: int = 2, **policy):
        topology = write_topology(short_dir, 1, migs)
        runtime = allocator_factory(policy=policy, topology=topology, docker=docker_client)
        devices = [d.device_uuid for d in runtime.allocator.inventory.current().devices]
        return runtime, AllocatorClient(str(runtime.socket_path)), devices

    return make


def _bound_to(runtime, container_id):
    return [a for a in runtime.allocator.live() if a.container_id == container_id]


def _adoptions(runtime, result):
    return runtime.registry.get_sample_value("ds01_allocator_adoptions_total", {"result": result})


def _grant_now(client, user):
    """Ask for one device without queueing: (status, devices or error)."""
    status, answer = as_user(client, user).call("POST", "/v1/allocations", {"queue": False})
    if status == 201:
        return status, answer["allocation"]["devices"]
    return status, answer["error"]


def test_a_direct_gpu_container_is_adopted_then_held_bound_and_released_by_its_events(
    direct, containers
):
    runtime, client, devices = direct(gpu_hold_after_stop="1h")
    container = containers(name="thesis", gpus=[devices[0]], labels=ALICE)
    [alloc] = eventually(lambda: _bound_to(runtime, container.id), WAIT, "adoption")
    assert (alloc.state, alloc.user, alloc.group, alloc.container_type) == (
        "bound",
        "alice",
        "student",
        "devcontainer",
    )
    assert alloc.container_name == "thesis" and alloc.devices == (devices[0],)
    assert _adoptions(runtime, "adopted") == 1
    labels = {
        "allocation": alloc.id,
        "user": "alice",
        "group": "student",
        "container_id": container.id,
        "device_uuid": devices[0],
        "state": "bound",
    }  # the series the unmanaged rule joins on: this container now counts as managed
    assert runtime.registry.get_sample_value("ds01_allocation_device", labels) == 1

    container.kill()
    eventually(lambda: client.get(alloc.id)["state"] == "held", WAIT, "held after die")
    container.start()
    eventually(lambda: client.get(alloc.id)["state"] == "bound", WAIT, "bound after start")
    remove_container(container)
    eventually(lambda: client.get(alloc.id)["state"] == "released", WAIT, "freed on destroy")
    assert client.get(alloc.id)["release_reason"] == "container_removed"
    assert _grant_now(client, "carol") == (201, [devices[0]])


def test_a_second_container_on_the_device_is_refused_and_the_device_is_never_granted(
    direct, containers
):
    runtime, client, devices = direct()
    first = containers(gpus=[devices[0]], labels=ALICE)
    [adopted] = eventually(lambda: _bound_to(runtime, first.id), WAIT, "first adopted")
    second = containers(gpus=[devices[0]], labels=BOB)
    eventually(lambda: _adoptions(runtime, "refused") == 1, WAIT, "second refused")
    assert _bound_to(runtime, second.id) == []
    assert _grant_now(client, "carol") == (201, [devices[1]])
    assert _grant_now(client, "root") == (503, "no_capacity")

    remove_container(first)  # its allocation goes; bob's container still runs on the device
    eventually(lambda: client.get(adopted.id)["state"] == "released", WAIT, "first freed")
    [bobs] = eventually(lambda: _bound_to(runtime, second.id), WAIT, "second adopted now")
    assert (bobs.user, bobs.container_type) == ("bob", "compose")
    assert _grant_now(client, "root") == (503, "no_capacity")

    remove_container(second)
    eventually(lambda: client.get(bobs.id)["state"] == "released", WAIT, "second freed")
    assert _grant_now(client, "root") == (201, [devices[0]])


def test_an_owner_over_quota_is_not_adopted_and_the_device_stays_blocked_while_it_runs(
    direct, containers
):
    runtime, client, devices = direct(migs=3)
    alice = as_user(client, "alice")
    held = [alice.allocate()["id"], alice.allocate()["id"]]  # student: 2 of 2
    free = sorted(set(devices) - {d for i in held for d in client.get(i)["devices"]})
    container = containers(gpus=free, labels=ALICE)
    eventually(lambda: _adoptions(runtime, "refused") == 1, WAIT, "refused over quota")
    assert _bound_to(runtime, container.id) == []
    [row] = [d for d in client.devices() if d["device_uuid"] == free[0]]
    assert (row["state"], row["container_id"], row["allocation"]) == ("busy", container.id, "")
    assert _grant_now(client, "bob") == (503, "no_capacity")

    alice.release(held[0])  # back within quota: the running container is adopted now
    [alloc] = eventually(lambda: _bound_to(runtime, container.id), WAIT, "adopted later")
    assert alloc.user == "alice" and alloc.devices == tuple(free)
    remove_container(container)
    eventually(lambda: client.get(alloc.id)["state"] == "released", WAIT, "freed")
    released = client.get(held[0])["devices"]
    granted = [_grant_now(client, "bob") for _ in range(2)]
    assert sorted(d for status, got in granted for d in got) == sorted([*free, *released])


def test_a_container_running_before_the_allocator_starts_is_adopted_at_reconcile(
    allocator_factory, docker_client, containers, sim_inventory
):
    device = sim_inventory[3].device_uuid  # the default sim topology, as the allocator's
    container = containers(gpus=[device], labels=BOB)
    runtime = allocator_factory(docker=docker_client)  # reconciles before it serves
    [alloc] = _bound_to(runtime, container.id)
    assert (alloc.state, alloc.user, alloc.devices) == ("bound", "bob", (device,))


def test_an_adopted_container_stopped_while_the_allocator_was_down_is_held_after_restart(
    allocator_factory, docker_client, containers, sim_inventory
):
    device = sim_inventory[2].device_uuid
    policy = {"gpu_hold_after_stop": "1h"}
    first = allocator_factory(policy=policy, docker=docker_client, name="restart")
    container = containers(gpus=[device], labels=ALICE)
    [adopted] = eventually(lambda: _bound_to(first, container.id), WAIT, "adoption")
    first.stop()
    container.kill()  # an unlabelled, stopped container: found again through its allocation
    second = allocator_factory(policy=policy, docker=docker_client, name="restart")
    [after] = _bound_to(second, container.id)
    assert (after.id, after.state) == (adopted.id, "held")
    remove_container(container)
    eventually(lambda: not _bound_to(second, container.id), WAIT, "freed on destroy")


def test_a_start_event_is_completed_by_an_inspect_and_kept_as_is_when_the_container_is_gone(
    allocator_factory, docker_client, containers, sim_inventory
):
    runtime = allocator_factory(docker=docker_client)
    device = sim_inventory[2].device_uuid
    container = containers(gpus=[device], labels=BOB)
    bare = ContainerEvent("start", ContainerView(container.id, "", "", "", True), 1.0)
    full = runtime.watcher.inspected(bare).container
    assert (full.gpu_devices, full.user, full.container_type) == ((device,), "bob", "compose")
    remove_container(container)
    assert runtime.watcher.inspected(bare) == bare
