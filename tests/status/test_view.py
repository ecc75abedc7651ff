"""The pure view: rows, holders, deadlines, the summary and staleness, from given samples."""

from __future__ import annotations

import math

from ds01.gpu_status.query import Sample, raw_status
from ds01.gpu_status.view import build_view
from ds01.gpu_status.view_json import view_to_json

NOW = 1_700_000_000.0
MIG = "MIG-11111111-1111-1111-1111-111111111111"
GPU = "GPU-22222222-2222-2222-2222-222222222222"
CID = "c" * 64


def s(name: str, value: float, **labels: str) -> Sample:
    return Sample({"__name__": name, **labels}, value, NOW)


def device(uuid: str, kind: str, profile: str = "", gpu_index: str = "0", **extra: str) -> Sample:
    return s(
        "ds01_gpu_device_info",
        1,
        device_uuid=uuid,
        gpu_uuid=GPU,
        gpu_index=gpu_index,
        gi_id="3" if kind == "mig" else "",
        profile=profile,
        model="NVIDIA H200",
        kind=kind,
        **extra,
    )


def holder(name: str, value: float, cid: str = CID, user: str = "alice") -> Sample:
    return s(
        name, value, container_id=cid, container="job", user=user, group="student", type="ds01"
    )


def raw(*series: Sample, last_collect: float | None = NOW - 2):
    collected = () if last_collect is None else (Sample({}, last_collect, NOW),)
    return raw_status(tuple(series), collected, NOW)


def held_mig(idle_deadline: float, runtime_deadline: float, busy: float = 0.0):
    return raw(
        device(MIG, "mig", "1g.18gb", gpu_index="1", mig_index="2"),
        device(GPU, "gpu", gpu_index="0"),
        s(
            "ds01_container_gpu_device",
            1,
            device_uuid=MIG,
            container_id=CID,
            container="job",
            user="alice",
            group="student",
            type="ds01",
        ),
        holder("ds01_container_busy", busy),
        holder("ds01_container_last_busy_timestamp_seconds", NOW - 600),
        holder("ds01_container_idle_deadline_timestamp_seconds", idle_deadline),
        holder("ds01_container_runtime_deadline_timestamp_seconds", runtime_deadline),
    )


def test_rows_are_ordered_by_gpu_then_mig_index_whole_gpu_first():
    view = build_view(held_mig(NOW + 60, NOW + 3600), now=NOW)
    assert [r.index for r in view.rows] == ["0", "1:2"]
    assert [r.state for r in view.rows] == ["free", "in_use"]


def test_stop_is_the_earlier_deadline_with_its_reason():
    row = build_view(held_mig(NOW + 7200, NOW + 3600), now=NOW).rows[1]
    assert row.stop == (NOW + 3600, "max_runtime")
    assert row.idle_for == 600
    row = build_view(held_mig(NOW + 60, NOW + 3600), now=NOW).rows[1]
    assert row.stop == (NOW + 60, "idle")


def test_infinite_deadlines_mean_never_and_json_null():
    view = build_view(held_mig(math.inf, math.inf), now=NOW)
    assert view.rows[1].stop == (None, None)
    entry = view_to_json(view, prometheus_url="u")["devices"][1]
    assert entry["stop_at"] is None
    assert entry["containers"][0]["idle_deadline"] is None


def test_busy_container_is_not_idle():
    row = build_view(held_mig(NOW + 60, NOW + 3600, busy=1), now=NOW).rows[1]
    assert row.idle_for == 0


def test_user_filter_keeps_only_that_users_devices_and_the_global_summary():
    view = build_view(held_mig(NOW + 60, NOW + 3600), now=NOW, user="alice")
    assert [r.device_uuid for r in view.rows] == [MIG]
    assert build_view(held_mig(NOW + 60, NOW + 3600), now=NOW, user="bob").rows == ()
    assert sum(f.total for f in view.free) == 2


def test_allocation_without_container_marks_device_reserved_or_held():
    for state, shown in (("reserved", "reserved"), ("held", "held"), ("bound", "allocated")):
        alloc = s(
            "ds01_allocation_device",
            1,
            allocation="a1",
            user="bob",
            group="student",
            container_id="",
            device_uuid=GPU,
            state=state,
        )
        row = build_view(raw(device(GPU, "gpu"), alloc), now=NOW).rows[0]
        assert row.state == shown
        assert row.users == ("bob",)


def test_free_counts_come_from_the_recording_rule_when_present():
    rule = s("ds01:devices_free:count", 0, profile="", model="NVIDIA H200", kind="gpu")
    view = build_view(raw(device(GPU, "gpu"), rule), now=NOW)
    assert [(f.label, f.free, f.total) for f in view.free] == [("full H200", 0, 1)]
    view = build_view(raw(device(GPU, "gpu")), now=NOW)  # rules not loaded: count the rows
    assert [(f.label, f.free, f.total) for f in view.free] == [("full H200", 1, 1)]


def test_queue_length_unknown_without_allocator_metrics():
    assert build_view(raw(device(GPU, "gpu")), now=NOW).queue_length is None
    queue = s("ds01_allocator_queue_length", 3)
    assert build_view(raw(device(GPU, "gpu"), queue), now=NOW).queue_length == 3


def test_stale_after_one_minute_by_default():
    assert not build_view(raw(device(GPU, "gpu"), last_collect=NOW - 59), now=NOW).stale
    view = build_view(raw(device(GPU, "gpu"), last_collect=NOW - 61), now=NOW)
    assert view.stale and "last collection 1m 1s ago" in view.warnings[0]
    view = build_view(raw(device(GPU, "gpu"), last_collect=None), now=NOW)
    assert view.stale and "no exporter data" in view.warnings[0]
    view = build_view(raw(device(GPU, "gpu"), last_collect=0), now=NOW)  # before its first pass
    assert view.stale and "has not completed a collection yet" in view.warnings[0]


def test_mig_index_falls_back_to_gi_id_when_the_exporter_does_not_label_it():
    view = build_view(raw(device(MIG, "mig", "1g.18gb")), now=NOW)
    assert view.rows[0].index == "0:gi3"
