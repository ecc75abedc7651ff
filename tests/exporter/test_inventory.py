"""The inventory follows Docker events through recorded `docker inspect` answers."""

from __future__ import annotations

import copy

import pytest

from exporter.inventory import Inventory, Mount


@pytest.fixture
def docker_state(inspects):
    """What the (recorded) Docker engine would answer, by container id; tests edit it."""
    return {data["Id"]: copy.deepcopy(data) for data in inspects.values()}


@pytest.fixture
def inventory(docker_state, sim_inventory):
    return Inventory(docker_state.get, sim_inventory)


def event(action: str, container_id: str) -> dict:
    return {"Type": "container", "Action": action, "Actor": {"ID": container_id, "Attributes": {}}}


def ids(inventory: Inventory) -> set[str]:
    return {e.facts.container_id for e in inventory.entries()}


def test_full_listing_classifies_every_container(inventory, docker_state, inspects, sim_inventory):
    assert not inventory.ready
    inventory.replace_all(docker_state.values())
    assert inventory.ready
    by_name = {e.facts.name: e for e in inventory.entries()}
    managed = by_name["alice-train"].facts
    assert (managed.user, managed.type, managed.managed, managed.allocation) == (
        "alice",
        "ds01",
        True,
        "a-17",
    )
    assert managed.gpu_devices == (sim_inventory[0].device_uuid,)
    dev = by_name["bob-dev"]
    assert (dev.facts.user, dev.facts.type) == ("bob", "devcontainer")
    assert Mount("/workspace", "/tmp/home/bob/project", "bind") in dev.mounts
    assert not by_name["plain"].facts.has_gpu
    assert not by_name["done-gpu"].facts.running


def test_start_event_adds_and_destroy_event_removes(inventory, docker_state, inspects):
    managed_id = inspects["gpu-managed"]["Id"]
    inventory.apply_event(event("start", managed_id))
    assert ids(inventory) == {managed_id}
    inventory.apply_event(event("destroy", managed_id))
    assert ids(inventory) == set()


def test_die_and_rename_events_refresh_the_facts(inventory, docker_state, inspects):
    cid = inspects["gpu-managed"]["Id"]
    inventory.replace_all(docker_state.values())
    docker_state[cid]["State"]["Running"] = False
    inventory.apply_event(event("die", cid))
    docker_state[cid]["Name"] = "/renamed"
    inventory.apply_event(event("rename", cid))
    facts = next(e.facts for e in inventory.entries() if e.facts.container_id == cid)
    assert (facts.running, facts.name) == (False, "renamed")


def test_an_event_for_a_container_already_gone_removes_it(inventory, docker_state, inspects):
    cid = inspects["gpu-managed"]["Id"]
    inventory.replace_all(docker_state.values())
    del docker_state[cid]
    inventory.apply_event(event("start", cid))
    assert cid not in ids(inventory)


def test_unrelated_events_are_ignored(inventory, inspects):
    calls = []
    inv = Inventory(lambda cid: calls.append(cid), ())
    inv.apply_event(event("exec_start: sh -c true", inspects["gpu-managed"]["Id"]))
    inv.apply_event({"Type": "network", "Action": "connect", "Actor": {"ID": "n1"}})
    assert calls == [] and inv.entries() == ()


def test_a_failing_inspect_propagates_so_the_watcher_relists(inspects):
    def broken(_cid):
        raise ConnectionError("docker is down")

    inv = Inventory(broken, ())
    with pytest.raises(ConnectionError):
        inv.apply_event(event("start", inspects["gpu-managed"]["Id"]))


def test_listing_replaces_what_was_known(inventory, docker_state, inspects):
    inventory.replace_all(docker_state.values())
    inventory.replace_all([docker_state[inspects["cpu-only"]["Id"]]])
    assert ids(inventory) == {inspects["cpu-only"]["Id"]}
