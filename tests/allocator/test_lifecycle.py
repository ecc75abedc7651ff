from allocator.lifecycle import (
    ContainerEvent,
    ContainerView,
    event_from_docker,
    reconcile,
    transition,
)
from allocator.model import BOUND, HELD, RELEASED, RESERVED, Allocation

CID = "c" * 64


def _alloc(state=RESERVED, container_id="", expires_at=100.0):
    return Allocation("a1", "alice", "student", ("MIG-1",), state, 1.0, expires_at, container_id)


def _event(action, user="alice", at=50.0, cid=CID):
    return ContainerEvent(action, ContainerView(cid, "job", "a1", user, action == "start"), at)


def test_a_labelled_container_binds_the_reservation():
    bound = transition(_alloc(), _event("create"), hold=30)
    assert bound.state == BOUND and bound.container_id == CID and bound.expires_at is None


def test_a_dead_container_holds_then_a_start_binds_again():
    held = transition(_alloc(BOUND, CID, None), _event("die", at=50.0), hold=30)
    assert held.state == HELD and held.expires_at == 80.0
    again = transition(held, _event("start"), hold=30)
    assert again.state == BOUND and again.expires_at is None


def test_removal_frees_at_once():
    gone = transition(_alloc(BOUND, CID, None), _event("destroy"), hold=30)
    assert gone.state == RELEASED and gone.release_reason == "container_removed"


def test_a_container_of_another_user_cannot_bind_it():
    assert transition(_alloc(), _event("create", user="mallory"), hold=30) is None


def test_a_second_container_cannot_take_a_bound_allocation():
    other = transition(_alloc(BOUND, CID, None), _event("destroy", cid="d" * 64), hold=30)
    assert other is None


def test_reconcile_frees_allocations_whose_container_is_gone_and_keeps_reservations():
    bound = _alloc(BOUND, CID, None)
    reserved = Allocation("a2", "bob", "student", ("MIG-2",), RESERVED, 1.0, 100.0)
    changes = reconcile([bound, reserved], {}, now=60.0, hold=30)
    assert [(c.id, c.state) for c in changes] == [("a1", RELEASED)]


def test_reconcile_holds_a_stopped_container_from_when_it_stopped():
    view = ContainerView(CID, "job", "a1", "alice", running=False, finished_at=40.0)
    [held] = reconcile([_alloc(BOUND, CID, None)], {"a1": view}, now=60.0, hold=30)
    assert held.state == HELD and held.expires_at == 70.0
    [late] = reconcile([_alloc(BOUND, CID, None)], {"a1": view}, now=75.0, hold=30)
    assert late.state == RELEASED and late.release_reason == "hold_expired"


def test_reconcile_binds_a_running_container():
    view = ContainerView(CID, "job", "a1", "alice", running=True)
    [bound] = reconcile([_alloc()], {"a1": view}, now=60.0, hold=30)
    assert bound.state == BOUND and bound.container_id == CID


def test_docker_event_is_read_from_actor_attributes():
    raw = {
        "Type": "container",
        "Action": "die",
        "Actor": {
            "ID": CID,
            "Attributes": {"ds01.allocation": "a1", "ds01.user": "alice", "name": "job"},
        },
        "timeNano": 1_700_000_000_500_000_000,
    }
    event = event_from_docker(raw)
    assert event.action == "die" and event.container.allocation == "a1"
    assert event.at == 1_700_000_000.5
    assert event_from_docker({**raw, "Action": "exec_start"}) is None
    unlabelled = {**raw, "Actor": {"ID": CID, "Attributes": {}}}
    # an unlabelled die still counts (an adopted container is followed by its id) ...
    assert event_from_docker(unlabelled).container.allocation == ""
    # ... but only a labelled create can bind anything
    assert event_from_docker({**unlabelled, "Action": "create"}) is None
