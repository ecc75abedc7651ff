from allocator.queue import Candidate, plan_fifo


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
