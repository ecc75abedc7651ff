"""Adoption through the Allocator service: sim inventory, real SQLite store, frozen clock.

Docker is replaced here only by the views and events the watcher would hand over; the same
paths run against a real dockerd in test_adoption_docker.py.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from prometheus_client import CollectorRegistry

from allocator.lifecycle import ContainerEvent, ContainerView
from allocator.metrics import AllocatorMetrics
from allocator.model import BOUND, HELD, RELEASED, RESERVED, AllocationRequest, AllocatorError
from allocator.service import Allocator, Settings
from allocator.store_sqlite import SqliteAllocationStore
from ds01.clock import FrozenClock
from ds01.policy import parse_policy

POLICY = {
    "gpu_wait": "3m",
    "reservation_ttl": "10m",
    "gpu_hold_after_stop": "60s",
    "groups": {
        "student": {"max_gpus": 1},
        "researcher": {"max_gpus": 2},
        "admin": {"max_gpus": None, "allow_full_gpu": True},
    },
    "users": {"alice": "student", "bob": "researcher", "carol": "researcher"},
}
A, B = "a" * 64, "b" * 64


@pytest.fixture
def clock():
    return FrozenClock()


@pytest.fixture
def registry():
    return CollectorRegistry()


@pytest.fixture
def make_service(tmp_path, sim_backend, clock, registry):
    """Factory: an Allocator on one SQLite file; calling it again is a restart (the one
    before lets go of the state, as its process would by ending)."""
    made: list[Allocator] = []

    def make(*, registered: bool = True):
        for before in made:
            before.store.close()
        made[:] = [
            Allocator(
                store=SqliteAllocationStore(tmp_path / "a.sqlite"),
                backend=sim_backend,
                policy=parse_policy(POLICY),
                clock=clock,
                metrics=AllocatorMetrics(registry if registered else None),
                settings=Settings(inventory_refresh=0, ticket_grace=3600),
            )
        ]
        return made[0]

    return make


@pytest.fixture
def service(make_service):
    return make_service()


@pytest.fixture
def small(sim_inventory):
    """The two 1g.18gb devices of the default sim topology."""
    return [d.device_uuid for d in sim_inventory if d.profile == "1g.18gb"]


def _view(cid, devices, user="alice", *, started=1.0, running=True, label="", name=None):
    return ContainerView(
        container_id=cid,
        name=name or f"direct-{cid[0]}",
        allocation=label,
        user=user,
        running=running,
        gpu_devices=tuple(devices),
        container_type="devcontainer",
        started_at=started,
    )


def _start(service, view, at=None):
    return service.apply_event(ContainerEvent("start", view, at or service.clock.time()))


def _event(service, action, view):
    return service.apply_event(ContainerEvent(action, view, service.clock.time()))


def _adoptions(registry, result):
    return registry.get_sample_value("ds01_allocator_adoptions_total", {"result": result})


def _holder(service, cid):
    return [a for a in service.live() if a.container_id == cid]


def test_reconcile_adopts_a_running_foreign_container_keeping_owner_and_type(
    service, small, registry
):
    service.reconcile([_view(A, [small[0]], user="bob", name="notebook")])
    [alloc] = _holder(service, A)
    assert (alloc.state, alloc.user, alloc.group) == (BOUND, "bob", "researcher")
    assert (alloc.container_type, alloc.container_name, alloc.devices) == (
        "devcontainer",
        "notebook",
        (small[0],),
    )
    assert _adoptions(registry, "adopted") == 1 and _adoptions(registry, "refused") == 0


def test_an_adopted_container_is_followed_by_id_through_die_start_and_destroy(
    service, small, clock
):
    view = _view(A, [small[0]], user="bob")
    adopted = _start(service, view)
    assert adopted.state == BOUND and adopted.container_id == A
    unlabelled = _view(A, [], user="", running=False)  # die/destroy carry labels only
    held = _event(service, "die", unlabelled)
    assert held.state == HELD and held.expires_at == clock.time() + 60
    assert _start(service, view).state == BOUND
    _event(service, "die", unlabelled)
    gone = _event(service, "destroy", unlabelled)
    assert gone.state == RELEASED and gone.release_reason == "container_removed"
    assert service.live() == []


def test_a_refused_container_blocks_its_device_until_it_dies_then_the_queue_gets_it(
    service, small, registry
):
    service.submit(AllocationRequest("alice", profile="3g.71gb"))  # alice: 1 of 1
    foreign = _view(A, [small[0]], user="alice")
    assert _start(service, foreign) is None
    assert _holder(service, A) == [] and _adoptions(registry, "refused") == 1
    [busy] = [d for d in service.devices() if d["device_uuid"] == small[0]]
    assert (busy["state"], busy["container_id"], busy["allocation"]) == ("busy", A, "")
    assert service.snapshot().free_by_profile["1g.18gb"] == 1

    assert service.submit(AllocationRequest("bob", profile="1g.18gb")).devices == (small[1],)
    with pytest.raises(AllocatorError) as refused:
        service.submit(AllocationRequest("carol", profile="1g.18gb"), wait=False)
    assert refused.value.denial.reason == "no_capacity"
    waiter = service.submit(AllocationRequest("carol", profile="1g.18gb"))
    service.tick()
    assert not waiter.resolved  # the blocked device is not granted on a tick either

    _event(service, "die", _view(A, [], user="", running=False))
    assert waiter.resolved and waiter.outcome.devices == (small[0],)


def test_a_second_container_on_an_adopted_device_is_refused_and_counted_once(
    service, small, registry
):
    first = _start(service, _view(A, [small[0]], user="bob", started=1.0))
    assert _start(service, _view(B, [small[0]], user="carol", started=2.0)) is None
    for _ in range(3):
        service.tick()
    assert _adoptions(registry, "refused") == 1  # once per start, not once per pass
    assert [a.id for a in service.live()] == [first.id]
    _event(service, "die", _view(B, [], user="", running=False))
    _start(service, _view(B, [small[0]], user="carol", started=3.0))
    assert _adoptions(registry, "refused") == 2


def test_reconcile_gives_a_shared_device_to_the_container_that_started_first(service, small):
    late = _view(A, [small[0]], user="bob", started=20.0)
    early = _view(B, [small[0]], user="carol", started=10.0)
    service.reconcile([late, early])
    assert [(a.container_id, a.user) for a in service.live()] == [(B, "carol")]


def test_a_refused_container_is_adopted_once_its_owner_is_back_within_quota(
    service, small, registry
):
    reservation = service.submit(AllocationRequest("alice", profile="3g.71gb"))
    _start(service, _view(A, [small[0]], user="alice"))
    assert _holder(service, A) == []
    service.release(reservation.id, user="alice")
    [alloc] = _holder(service, A)
    assert alloc.state == BOUND and alloc.user == "alice"
    assert _adoptions(registry, "adopted") == 1


def test_a_forged_or_stale_label_is_treated_as_foreign(service, small):
    bobs = service.submit(AllocationRequest("bob", profile="3g.71gb"))
    forged = _view(A, [small[0]], user="carol", label=bobs.id)
    adopted = _start(service, forged)
    assert adopted.id != bobs.id and adopted.user == "carol" and adopted.devices == (small[0],)
    assert service.get(bobs.id, user="bob").state == RESERVED  # the label bound nothing

    stale = service.submit(AllocationRequest("bob", profile="2g.35gb"))
    service.release(stale.id, user="bob")
    relabelled = _start(service, _view(B, [small[1]], user="bob", label=stale.id))
    assert relabelled.id != stale.id and relabelled.state == BOUND


def test_a_labelled_container_binds_its_allocation_and_is_not_adopted(service, small, registry):
    alloc = service.submit(AllocationRequest("bob", profile="1g.18gb"))
    bound = _start(service, _view(A, alloc.devices, user="bob", label=alloc.id))
    assert bound.id == alloc.id and bound.state == BOUND
    assert _adoptions(registry, "adopted") == 0 and _adoptions(registry, "refused") == 0


def test_an_adopted_allocation_survives_a_restart_stopped_then_goes_with_its_container(
    make_service, service, small, clock
):
    adopted = _start(service, _view(A, [small[0]], user="bob"))
    clock.advance(10)
    restarted = make_service(registered=False)
    stopped = replace(_view(A, [small[0]], user="bob", running=False), finished_at=clock.time() - 5)
    restarted.reconcile([stopped])
    after = restarted.get(adopted.id, user="bob")
    assert after.state == HELD and after.expires_at == clock.time() + 55
    restarted.reconcile([])
    assert restarted.get(adopted.id, user="bob").release_reason == "container_gone"
