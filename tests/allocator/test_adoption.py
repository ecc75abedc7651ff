"""Adoption decisions (pure): adopt a GPU container that bypassed the allocator, or say why not."""

from __future__ import annotations

import pytest

from allocator.adoption import decide_adoption, first_come, foreign_containers
from allocator.lifecycle import ContainerView
from allocator.model import BOUND, HELD, RESERVED, Allocation

CID = "c" * 64
OTHER = "d" * 64


@pytest.fixture
def mig(sim_inventory):
    """The two 1g.18gb MIG devices and the whole GPU of the default sim topology."""
    small = [d.device_uuid for d in sim_inventory if d.profile == "1g.18gb"]
    [whole] = [d.device_uuid for d in sim_inventory if d.kind == "gpu"]
    return small[0], small[1], whole


def _view(devices, user="alice", cid=CID, started=10.0, name="direct"):
    return ContainerView(cid, name, "", user, True, gpu_devices=tuple(devices), started_at=started)


def _decide(view, inventory, live=(), earlier=(), max_gpus=2, allow_full_gpu=False, waiting=0):
    return decide_adoption(
        container=view,
        live=list(live),
        inventory=inventory,
        earlier=earlier,
        group="student",
        max_gpus=max_gpus,
        allow_full_gpu=allow_full_gpu,
        waiting=waiting,
    )


def test_a_container_on_a_free_device_within_quota_is_adopted(sim_inventory, mig):
    decision = _decide(_view([mig[0]]), sim_inventory)
    assert decision.adopt and decision.devices == (mig[0],)
    assert decision.reason == "devices free; alice holds 0 of 2"


def test_a_device_of_an_allocation_is_never_adopted_whatever_its_state(sim_inventory, mig):
    for state in (RESERVED, BOUND, HELD):
        held = Allocation("a1", "bob", "student", (mig[0],), state, 1.0, container_id=OTHER)
        decision = _decide(_view([mig[0]]), sim_inventory, live=[held])
        assert not decision.adopt
        assert decision.reason == f"device {mig[0]} held by allocation a1 of bob"


def test_the_owner_at_quota_is_refused_with_the_numbers(sim_inventory, mig):
    mine = Allocation("a1", "alice", "student", (mig[1],), BOUND, 1.0, container_id=OTHER)
    decision = _decide(_view([mig[0]]), sim_inventory, live=[mine], max_gpus=1)
    assert not decision.adopt and decision.reason == "alice holds 1 of 1; the container needs 1"
    decision = _decide(_view([mig[0]]), sim_inventory, max_gpus=1, waiting=1)
    assert decision.reason == "alice holds 0 of 1 and waits for 1; the container needs 1"
    assert _decide(_view([mig[0]]), sim_inventory, live=[mine], max_gpus=None).adopt


def test_a_device_outside_the_inventory_is_refused(sim_inventory):
    decision = _decide(_view(["MIG-not-here"]), sim_inventory)
    assert not decision.adopt and decision.reason == "device MIG-not-here not in inventory"


def test_an_unknown_owner_is_never_adopted(sim_inventory, mig):
    for user in ("unknown", ""):
        decision = _decide(_view([mig[0]], user=user), sim_inventory)
        assert not decision.adopt and decision.reason.startswith("owner unknown")


def test_a_whole_gpu_needs_allow_full_gpu(sim_inventory, mig):
    decision = _decide(_view([mig[2]]), sim_inventory)
    assert not decision.adopt and decision.reason == "group student may not hold a whole GPU"
    assert _decide(_view([mig[2]]), sim_inventory, allow_full_gpu=True).adopt


def test_a_device_used_by_an_earlier_running_container_is_refused(sim_inventory, mig):
    first = _view([mig[0]], user="bob", cid=OTHER, started=5.0, name="first")
    decision = _decide(_view([mig[0], mig[1]]), sim_inventory, earlier=[first])
    assert not decision.adopt
    assert decision.reason == f"device {mig[0]} used by running container first"


def test_foreign_containers_are_the_unbound_gpu_ones_in_start_order(mig):
    late = _view([mig[0]], cid="2" * 64, started=30.0)
    early = _view([mig[1]], cid="3" * 64, started=20.0)
    bound = _view([mig[2]], cid="4" * 64, started=1.0)
    no_gpu = _view([], cid="5" * 64, started=2.0)
    live = [Allocation("a1", "alice", "student", (mig[2],), BOUND, 1.0, container_id="4" * 64)]
    assert foreign_containers([late, bound, early, no_gpu], live) == [early, late]
    assert first_come([late, early]) == [early, late]
