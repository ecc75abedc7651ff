"""`POST /v1/extensions` over the allocator's real socket: own containers only, bounded by
the group, recorded in the database and the totals file, and still there after a restart."""

from __future__ import annotations

import json

import pytest

from allocator.client import AllocatorClient, Refused
from allocator.lifecycle import ContainerEvent, ContainerView
from allocator.model import AllocationRequest
from tests.allocator.conftest import WAIT, as_user

CID = "e" * 64
STUDENTS = {
    "groups": {
        "student": {
            "max_gpus": 2,
            "extensions": {"max_per_container": 2, "max_each": "4h", "max_total": "8h"},
        },
        "admin": {"max_gpus": None},
    },
    "default_group": "student",
}


def _bound_container(runtime, user: str = "alice", cid: str = CID, name: str = "job") -> str:
    """A granted allocation bound to a (stand-in) running container, as the events make it."""
    alloc = runtime.allocator.submit(AllocationRequest(user, container_name=name), wait=False)
    view = ContainerView(cid, name, alloc.id, user, True)
    runtime.allocator.apply_event(ContainerEvent("start", view, runtime.allocator.clock.time()))
    return alloc.id


def _totals(runtime) -> dict:
    return json.loads(runtime.desk.totals_path.read_text())["containers"]


def test_two_extensions_then_the_third_is_refused_with_the_numbers(allocator_factory):
    runtime = allocator_factory(policy=STUDENTS)
    _bound_container(runtime)
    alice = as_user(AllocatorClient(str(runtime.socket_path)), "alice")
    first = alice.extend("job", "3h")
    assert first["extension"]["seconds"] == 3 * 3600 and first["extensions_used"] == 1
    second = alice.extend("job", "4h")
    assert second["total_seconds"] == 7 * 3600
    assert _totals(runtime) == {CID: {"runtime": 7 * 3600.0, "idle": 0.0}}
    with pytest.raises(Refused) as refused:
        alice.extend("job", "1h")
    assert refused.value.status == 403 and refused.value.reason == "extension_refused"
    assert "2 of 2 extensions" in refused.value.message and "7h" in refused.value.message
    assert refused.value.payload["max_per_container"] == 2
    assert _totals(runtime) == {CID: {"runtime": 7 * 3600.0, "idle": 0.0}}
    counted = runtime.registry.get_sample_value
    assert counted("ds01_allocator_extensions_total", {"kind": "runtime", "result": "granted"}) == 2
    assert counted("ds01_allocator_extensions_total", {"kind": "runtime", "result": "refused"}) == 1


def test_an_idle_extension_and_the_default_duration(allocator_factory):
    runtime = allocator_factory(policy=STUDENTS)
    _bound_container(runtime)
    alice = as_user(AllocatorClient(str(runtime.socket_path)), "alice")
    answer = alice.extend("job", kind="idle")  # no duration: the group's max_each
    assert answer["extension"]["kind"] == "idle" and answer["extension"]["seconds"] == 4 * 3600
    assert _totals(runtime) == {CID: {"runtime": 0.0, "idle": 4 * 3600.0}}


def test_another_users_container_is_not_found_and_nothing_is_recorded(allocator_factory):
    runtime = allocator_factory(policy=STUDENTS)
    _bound_container(runtime, user="alice")
    bob = as_user(AllocatorClient(str(runtime.socket_path)), "bob")
    with pytest.raises(Refused) as refused:
        bob.extend("job", "1h")
    assert refused.value.status == 404
    assert _totals(runtime) == {}


def test_refused_while_another_user_waits_for_that_device_type(allocator_factory):
    runtime = allocator_factory(policy={**STUDENTS, "gpu_wait": "30s"})
    client = AllocatorClient(str(runtime.socket_path))
    _bound_container(runtime, "alice", CID, "job")
    # Fill every other device so carol's request has to queue.
    for i, user in enumerate(("bob", "bob", "carol")):
        _bound_container(runtime, user, f"{i}" * 64, f"other{i}")
    waiter = runtime.allocator.submit(AllocationRequest("carol"), wait=True)
    try:
        with pytest.raises(Refused) as refused:
            as_user(client, "alice").extend("job", "1h")
        assert "1 request(s) wait" in refused.value.message
    finally:
        runtime.allocator.cancel(waiter.ticket, user="carol")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "container"),
        ({"container": ""}, "container"),
        ({"container": "job", "duration": "soon"}, "duration"),
        ({"container": "job", "duration": "0s"}, "duration"),
        ({"container": "job", "duration": True}, "duration"),
        ({"container": "job", "kind": "memory"}, "kind"),
    ],
)
def test_a_bad_body_is_a_400_naming_the_field_and_records_nothing(allocator_factory, body, field):
    runtime = allocator_factory(policy=STUDENTS)
    _bound_container(runtime)
    client = AllocatorClient(str(runtime.socket_path))
    status, answer = client.call("POST", "/v1/extensions", {**body, "user": "alice"})
    assert status == 400 and answer["message"].startswith(f"{field}:")
    assert _totals(runtime) == {}


def test_extensions_survive_an_allocator_restart(allocator_factory):
    runtime = allocator_factory(policy=STUDENTS, name="r")
    _bound_container(runtime)
    as_user(AllocatorClient(str(runtime.socket_path)), "alice").extend("job", "2h")
    runtime.stop()
    runtime.desk.totals_path.unlink()  # rewritten from the database at start
    again = allocator_factory(policy=STUDENTS, name="r")
    assert _totals(again) == {CID: {"runtime": 7200.0, "idle": 0.0}}
    listed = as_user(AllocatorClient(str(again.socket_path)), "alice").extensions()
    assert [(e["container_name"], e["seconds"]) for e in listed] == [("job", 7200.0)]


def test_a_released_allocation_drops_out_of_the_totals_at_the_next_publish(allocator_factory):
    runtime = allocator_factory(policy=STUDENTS)
    alloc_id = _bound_container(runtime)
    as_user(AllocatorClient(str(runtime.socket_path)), "alice").extend("job", "1h")
    assert CID in _totals(runtime)
    runtime.allocator.release(alloc_id, user="alice")
    runtime.desk.publish()  # what the ticker does at each history prune
    assert _totals(runtime) == {}


def test_a_publish_that_read_before_a_grant_never_lands_after_it(allocator_factory, monkeypatch):
    """The ticker's publish reads the rows, then a grant commits and publishes: the file must
    end with the grant, never with the older reading written last."""
    import threading

    import allocator.extension_desk as desk_module

    runtime = allocator_factory(policy=STUDENTS)
    _bound_container(runtime)
    read_done, go = threading.Event(), threading.Event()
    real_write = desk_module.write_totals

    def slow_first_write(path, extensions):
        if threading.current_thread().name == "ticker-publish":
            read_done.set()
            go.wait(WAIT)  # hold the stale reading until the grant has had its chance
        real_write(path, extensions)

    monkeypatch.setattr(desk_module, "write_totals", slow_first_write)
    ticker = threading.Thread(target=runtime.desk.publish, name="ticker-publish")
    ticker.start()
    assert read_done.wait(WAIT)
    grant = threading.Thread(
        target=runtime.desk.extend,
        kwargs={"user": "alice", "container": "job", "seconds": 600.0, "kind": "runtime"},
    )
    grant.start()
    grant.join(0.5)  # unlocked, the grant writes its file now; locked, it waits its turn
    go.set()
    ticker.join(WAIT)
    grant.join(WAIT)
    assert _totals(runtime) == {CID: {"runtime": 600.0, "idle": 0.0}}
