"""The pure extension decision and the totals file the exporter reads."""

from __future__ import annotations

import json

from allocator.extensions import Extension, decide_extension, totals, write_totals
from ds01.policy_model import ExtensionBounds

H = 3600.0
STUDENT = ExtensionBounds(max_per_container=2, max_total=8 * H, max_each=4 * H)


def _ext(seconds: float, kind: str = "runtime", cid: str = "c" * 64) -> Extension:
    return Extension(cid, "job", "a1", "alice", kind, seconds, 1.0)


def _decide(seconds: float, earlier=(), bounds=STUDENT, waiting=0):
    return decide_extension(
        seconds=seconds, bounds=bounds, group="student", earlier=earlier, others_waiting=waiting
    )


def test_within_every_bound_is_granted():
    assert _decide(4 * H).granted
    assert _decide(4 * H, [_ext(4 * H)]).granted


def test_the_third_is_refused_with_the_count_and_the_bound():
    decision = _decide(H, [_ext(3 * H), _ext(3 * H)])
    assert not decision.granted
    assert "2 of 2 extensions" in decision.reason and "6h" in decision.reason
    assert decision.details["extensions_used"] == 2
    assert decision.details["max_per_container"] == 2


def test_more_than_max_each_is_refused_naming_it():
    decision = _decide(5 * H)
    assert not decision.granted and "max_each 4h" in decision.reason


def test_past_max_total_is_refused_with_what_is_left():
    bounds = ExtensionBounds(max_per_container=5, max_total=8 * H, max_each=6 * H)
    decision = _decide(4 * H, [_ext(6 * H)], bounds=bounds)
    assert not decision.granted
    assert "6h of 8h" in decision.reason and "at most 2h more" in decision.reason


def test_a_group_without_extensions_is_refused():
    decision = _decide(H, bounds=ExtensionBounds())
    assert not decision.granted and "may not extend" in decision.reason


def test_unbounded_groups_extend_freely():
    unlimited = ExtensionBounds(None, None, None, refuse_while_queued=False)
    assert _decide(100 * H, [_ext(H)] * 50, bounds=unlimited, waiting=3).granted


def test_others_waiting_refuses_only_when_the_policy_says_so():
    refused = _decide(H, waiting=2)
    assert not refused.granted and "2 request(s) wait" in refused.reason
    relaxed = ExtensionBounds(2, 8 * H, 4 * H, refuse_while_queued=False)
    assert _decide(H, bounds=relaxed, waiting=2).granted


def test_zero_or_negative_is_refused():
    assert not _decide(0).granted


def test_totals_sum_by_container_and_kind_and_the_file_is_replaced(tmp_path):
    exts = [_ext(H), _ext(2 * H), _ext(600, "idle"), _ext(H, cid="d" * 64)]
    assert totals(exts) == {
        "c" * 64: {"runtime": 3 * H, "idle": 600.0},
        "d" * 64: {"runtime": H, "idle": 0.0},
    }
    path = tmp_path / "extensions.json"
    write_totals(path, exts)
    write_totals(path, exts[:1])
    assert json.loads(path.read_text())["containers"] == {"c" * 64: {"runtime": H, "idle": 0.0}}
    assert [p.name for p in tmp_path.iterdir()] == ["extensions.json"]
