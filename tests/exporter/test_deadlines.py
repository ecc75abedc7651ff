"""What counts as busy and when the deadlines fall: pure decisions, tested directly."""

from __future__ import annotations

import math

from exporter.deadlines import (
    container_busy,
    idle_deadline,
    keep_alive_fresh,
    runtime_deadline,
)


def test_idle_deadline_is_last_busy_plus_timeout():
    deadline = idle_deadline(
        last_busy=1000.0, idle_timeout=1800.0, idle_exempt=False, keep_alive=False
    )
    assert (deadline.at, deadline.reason) == (2800.0, "timeout")
    assert not math.isinf(deadline.at)


def test_fresh_keep_alive_or_exemption_make_the_idle_deadline_infinite():
    kept = idle_deadline(last_busy=0.0, idle_timeout=60.0, idle_exempt=False, keep_alive=True)
    exempt = idle_deadline(last_busy=0.0, idle_timeout=60.0, idle_exempt=True, keep_alive=True)
    assert (kept.at, kept.reason) == (math.inf, "keep_alive")
    assert (exempt.at, exempt.reason) == (math.inf, "exempt")


def test_runtime_deadline_is_first_start_plus_max_runtime_unless_exempt():
    assert runtime_deadline(first_start=10.0, max_runtime=100.0, runtime_exempt=False).at == 110.0
    exempt = runtime_deadline(first_start=10.0, max_runtime=100.0, runtime_exempt=True)
    assert math.isinf(exempt.at) and exempt.reason == "exempt"


def test_keep_alive_is_fresh_only_when_present_and_younger_than_max_age():
    assert keep_alive_fresh(mtime=None, now=100.0, max_age=60.0) is False
    assert keep_alive_fresh(mtime=50.0, now=100.0, max_age=60.0) is True
    assert keep_alive_fresh(mtime=40.0, now=100.0, max_age=60.0) is False  # exactly max_age old
    assert keep_alive_fresh(mtime=500.0, now=100.0, max_age=60.0) is True  # future mtime: now


def busy(cid="a", devices=("d1",), device_busy=None, holders=None, owners=None) -> bool:
    return container_busy(
        container_id=cid,
        devices=devices,
        device_busy=device_busy if device_busy is not None else {"d1": True},
        holders=holders or {},
        process_owners=owners or {},
    )


def test_a_container_is_busy_when_a_device_it_holds_alone_is_busy():
    assert busy(device_busy={"d1": True}, holders={"d1": 1})
    assert not busy(device_busy={"d1": False}, holders={"d1": 1})
    assert busy(devices=("d1", "d2"), device_busy={"d1": False, "d2": True})


def test_an_unsampled_device_counts_as_busy():
    assert busy(devices=("unknown-device",), device_busy={})


def test_on_a_shared_device_only_containers_with_a_process_there_are_busy():
    shared = {"device_busy": {"d1": True}, "holders": {"d1": 2}, "owners": {"d1": frozenset({"a"})}}
    assert busy(cid="a", **shared)
    assert not busy(cid="b", **shared)


def test_on_a_shared_device_with_unknown_processes_every_holder_is_busy():
    assert busy(cid="b", device_busy={"d1": True}, holders={"d1": 2}, owners={"d1": None})
