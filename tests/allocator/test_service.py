"""The Allocator service directly (no HTTP): frozen clock, sim inventory, SQLite in tmp."""

from __future__ import annotations

import pytest

from allocator.model import RESERVED, Allocation, AllocationRequest, AllocatorError
from allocator.service import Allocator, Settings, wait_failed_message
from allocator.store_sqlite import SqliteAllocationStore
from ds01.clock import FrozenClock
from ds01.policy import parse_policy


@pytest.fixture
def clock():
    return FrozenClock()


@pytest.fixture
def service(tmp_path, sim_backend, clock):
    policy = parse_policy({"gpu_wait": "3m", "reservation_ttl": "10m"})
    return Allocator(
        store=SqliteAllocationStore(tmp_path / "a.sqlite"),
        backend=sim_backend,
        policy=policy,
        clock=clock,
        settings=Settings(inventory_refresh=0, ticket_grace=3600),
    )


def test_the_wait_message_keeps_the_designs_shape_and_tells_the_truth_about_freeing():
    holder = wait_failed_message(180, holding=2, hold_after_stop=900)
    assert holder == (
        "GPU allocation failed after 3 minutes.\n\n"
        "Suggestions:\n"
        "  1. Free one of your 2 at once: container retire <name> "
        "(container stop <name> keeps its GPU for 15m)\n"
        "  2. Wait for cleanup: idle GPU containers are stopped as they pass their idle "
        "timeout, and a stopped one frees its GPU 15m later\n"
        "  3. Check GPU status: gpu-status"
    )
    empty_handed = wait_failed_message(3, holding=0, hold_after_stop=2)
    assert empty_handed.startswith("GPU allocation failed after 3 seconds.\n\nSuggestions:\n")
    assert "retire" not in empty_handed and "Free one" not in empty_handed
    assert empty_handed.count("\n  ") == 3


def test_reservation_expires_after_its_ttl_on_the_clock(service, clock):
    alloc = service.submit(AllocationRequest("alice"))
    clock.advance(599)
    service.tick()
    assert service.get(alloc.id, user="alice").state == RESERVED
    clock.advance(2)
    service.tick()
    assert service.get(alloc.id, user="alice").release_reason == "reservation_expired"


def test_waiter_times_out_at_gpu_wait(service, clock):
    service.submit(AllocationRequest("alice", profile="3g.71gb"))
    waiter = service.submit(AllocationRequest("bob", profile="3g.71gb"))
    clock.advance(179)
    service.tick()
    assert not waiter.resolved
    clock.advance(1)
    service.tick()
    assert waiter.outcome.reason == "timeout"
    assert waiter.outcome.message.startswith("GPU allocation failed after 3 minutes.")


def test_a_request_nobody_waits_ahead_of_is_granted_without_a_ticket(service):
    granted = service.submit(AllocationRequest("alice", profile="1g.18gb"))
    assert isinstance(granted, Allocation) and granted.state == RESERVED
    assert len(service.queue) == 0 and list(service.queue) == []
    assert [a.id for a in service.live("alice")] == [granted.id]


def test_a_newcomer_never_takes_a_free_device_a_waiter_ahead_of_it_can_use(service):
    """Strict FIFO: bob waits for both 1g.18gb instances; the one that is free stays his
    claim, so carol, asking for one after him, queues behind him instead of taking it."""
    alice = service.submit(AllocationRequest("alice", profile="1g.18gb"))
    bob = service.submit(AllocationRequest("bob", count=2, profile="1g.18gb"))
    carol = service.submit(AllocationRequest("carol", profile="1g.18gb"))
    assert not bob.resolved and not carol.resolved
    assert [w.ticket for w in service.queue] == [bob.ticket, carol.ticket]
    service.release(alice.id, user="alice")
    assert isinstance(bob.outcome, Allocation) and len(bob.outcome.devices) == 2
    assert not carol.resolved
    assert service.submit(AllocationRequest("dave", profile="3g.71gb")).profile == "3g.71gb"


def test_quota_counts_waiting_requests(service):
    service.submit(AllocationRequest("alice", profile="3g.71gb"))
    service.submit(AllocationRequest("bob", profile="3g.71gb"))  # waits
    service.submit(AllocationRequest("bob", profile="2g.35gb"))
    with pytest.raises(AllocatorError) as refused:
        service.submit(AllocationRequest("bob"))
    assert "holds 1 of 2 GPUs and waits for 1 more" in refused.value.denial.message


def test_devices_missing_from_the_inventory_are_marked_not_handed_out(service, clock):
    with service.store.transaction() as tx:
        tx.insert(Allocation("old", "alice", "student", ("MIG-gone",), RESERVED, clock.time()))
    service.reconcile({})
    [vanished] = [d for d in service.devices() if d["state"] == "vanished"]
    assert vanished["device_uuid"] == "MIG-gone" and vanished["allocation"] == "old"
    assert service.get("old", user="alice").vanished == ("MIG-gone",)
