from allocator.model import AllocationRequest, Denial
from allocator.queue import Candidate, Waiter, WaitQueue, plan_fifo


def test_first_come_first_served_for_the_same_devices():
    grants = plan_fifo([Candidate("t1", 1, ("a", "b")), Candidate("t2", 1, ("a", "b"))], free=["b"])
    assert grants == [("t1", ("b",))]


def test_a_waiter_for_other_devices_is_not_blocked():
    grants = plan_fifo([Candidate("big", 1, ("x",)), Candidate("small", 1, ("a",))], free=["a"])
    assert grants == [("small", ("a",))]


def test_an_unserved_earlier_waiter_keeps_its_claim():
    # t1 needs two devices and only one is free: t2 must not take it (strict FIFO).
    grants = plan_fifo([Candidate("t1", 2, ("a", "b")), Candidate("t2", 1, ("a", "b"))], free=["a"])
    assert grants == []


def test_several_grants_in_order_without_sharing_devices():
    grants = plan_fifo(
        [Candidate("t1", 1, ("a", "b", "c")), Candidate("t2", 2, ("a", "b", "c"))],
        free=["c", "a", "b"],
    )
    assert grants == [("t1", ("a",)), ("t2", ("b", "c"))]


def test_restore_puts_back_what_a_rolled_back_transaction_decided():
    from allocator.model import Allocation, AllocationRequest
    from allocator.queue import Waiter, WaitQueue

    queue = WaitQueue()
    first = Waiter("t1", AllocationRequest("alice"), "student", 1.0, 100.0)
    second = Waiter("t2", AllocationRequest("bob"), "student", 2.0, 100.0)
    queue.add(first)
    queue.add(second)
    mark = queue.checkpoint()
    granted = Allocation("a1", "alice", "student", ("MIG-1",), "reserved", created_at=3.0)
    queue.resolve("t1", granted, 3.0)
    queue.add(Waiter("t3", AllocationRequest("carol"), "student", 3.0, 100.0))
    queue.restore(mark)
    assert [w.ticket for w in queue] == ["t1", "t2"]  # FIFO order kept, the newcomer gone
    assert not first.resolved and first.resolved_at is None
    assert queue.get("t3") is None


def _waiter(ticket: str) -> Waiter:
    return Waiter(ticket, AllocationRequest("alice"), "staff", enqueued_at=0.0, deadline=300.0)


def test_resolved_tickets_are_forgotten_oldest_first_once_past_their_keep():
    queue = WaitQueue(keep_resolved=60.0)
    for ticket, at in (("t1", 1.0), ("t2", 2.0), ("t3", 30.0)):
        queue.add(_waiter(ticket))
        queue.resolve(ticket, Denial("timeout", "waited too long"), at)
    queue.forget_old(now=62.5)
    assert [queue.get(t) is not None for t in ("t1", "t2", "t3")] == [False, False, True]
    queue.forget_old(now=90.0)
    assert queue.get("t3") is not None  # exactly 60 s: still kept
    queue.forget_old(now=90.5)
    assert queue.get("t3") is None


def test_a_ticket_nobody_was_shown_can_be_forgotten_at_once():
    queue = WaitQueue()
    queue.add(_waiter("t1"))
    queue.resolve("t1", Denial("quota", "over quota"), 1.0)
    queue.forget("t1")
    assert queue.get("t1") is None
    queue.forget("never-seen")  # nothing to forget: no error
