"""What `container ls`/`history` say: humanised local times, reasons and next steps."""

from __future__ import annotations

from datetime import UTC, datetime

from allocator.container_listing import device_text, render_listing
from allocator.container_views import history_rows, in_force, relative, stop_story
from ds01.policy import Exemption

NOW = datetime(2026, 11, 30, 14, 0, tzinfo=UTC).timestamp()


def test_relative_times_read_like_speech_never_like_go_timestamps():
    assert relative(NOW + 4320, NOW) == "in 1h 12m"
    assert relative(NOW - 180, NOW) == "3m ago"
    assert relative(NOW, NOW) == "now"


def test_an_idle_stop_says_since_when_the_timeout_and_what_to_do():
    record = {"time": NOW - 180, "reason": "idle", "deadline": NOW - 185.0, "limit_seconds": 900.0}
    story = stop_story(
        name="job", record=record, exit_code=137, finished_at=NOW - 170,
        hold_until=NOW + 720, now=NOW, tz=UTC,
    )  # fmt: skip
    assert story.reason == "idle" and story.at == NOW - 180
    assert story.why == ("its GPU was idle since 13:41 (18m ago), past its idle timeout of 15m")
    assert story.what_to_do[0] == (
        "`docker start job` resumes it: its GPU stays yours until 14:12 (in 12m)"
    )
    assert "`container retire job` frees its GPU now" in story.what_to_do
    assert "touch /workspace/.keep-alive" in story.what_to_do[2]


def test_other_reasons_and_a_plain_exit():
    runtime = stop_story(
        name="j", record={"time": NOW, "reason": "max_runtime", "limit_seconds": 86400.0},
        exit_code=0, finished_at=None, hold_until=None, now=NOW,
    )  # fmt: skip
    assert runtime.why == "it reached its maximum runtime of 1d"
    assert "start a new container" in runtime.what_to_do[0]
    unmanaged = stop_story(
        name="j", record={"time": NOW, "reason": "unmanaged"}, exit_code=0,
        finished_at=None, hold_until=None, now=NOW,
    )  # fmt: skip
    assert "no ds01 allocation" in unmanaged.why
    admin = stop_story(
        name="j", record={"time": NOW, "reason": "admin", "detail": "maintenance"},
        exit_code=0, finished_at=None, hold_until=None, now=NOW,
    )  # fmt: skip
    assert admin.why == "an admin stopped it (maintenance)"
    plain = stop_story(
        name="j", record=None, exit_code=3, finished_at=NOW - 60, hold_until=NOW - 1, now=NOW
    )
    assert plain.reason == "exited" and "code 3" in plain.why
    assert "its hold has ended" in plain.what_to_do[0]


def test_in_force_shows_keep_alive_exemption_and_the_next_deadline_with_its_kind():
    entry = {
        "busy": False,
        "last_busy": NOW - 600,
        "keep_alive": True,
        "keep_alive_until": NOW + 3600,
        "idle_deadline": None,  # +Inf: the keep-alive holds it off
        "runtime_deadline": NOW + 4320,
    }
    exemption = Exemption(
        frozenset({"idle"}),
        "thesis deadline",
        user="carol",
        until=datetime(2027, 1, 31, tzinfo=UTC),
    )
    shown = in_force(entry, exemptions=[exemption], now=NOW, tz=UTC)
    assert shown.idle_for == "10m"
    assert shown.next_stop == "15:12 (in 1h 12m, max runtime stop)"
    assert shown.notes(NOW, UTC) == [
        "keep-alive until 15:00 (in 1h)",
        "exempt from idle until 2027-01-31 00:00 (thesis deadline)",
    ]
    assert shown.to_json()["next_stop"] == {"kind": "runtime", "at": NOW + 4320, "extended": False}
    assert in_force({"busy": True}, now=NOW).next_stop == "never"
    assert in_force(None, now=NOW).next_stop == "-"


def test_history_rows_and_the_listing_name_index_and_profile_not_uuids():
    rows = history_rows(
        [
            {"time": NOW - 60, "kind": "stop", "reason": "max_runtime", "container": "j"},
            {"time": NOW - 30, "kind": "wait", "decision": "timed out", "detail": "x"},
        ],
        now=NOW,
        tz=UTC,
    )
    assert rows == [
        ("13:59 (1m ago)", "stop (max runtime)", "j", ""),
        ("13:59 (30s ago)", "wait timed out", "-", "x"),
    ]
    devices = [{"index": "0:2", "profile": "1g.18gb", "uuid": "MIG-1234567890abcdef"}]
    assert device_text(devices) == "0:2 (1g.18gb)"
    assert device_text(devices, verbose=True) == "0:2 (1g.18gb) MIG-1234567890abcdef"
    text = render_listing(
        [{"name": "j", "state": "exited", "devices": devices,
          "stop": {"at": NOW - 60, "reason": "idle", "why": "idle", "what_to_do": ["a"]}}],
        now=NOW,
    )  # fmt: skip
    assert "MIG-" not in text
    assert "stopped 1m ago: idle" in text and "j stopped at " in text and "  - a" in text


def test_an_extended_deadline_says_so():
    entry = {"runtime_deadline": NOW + 4320, "runtime_deadline_reason": "extended"}
    shown = in_force(entry, now=NOW, tz=UTC)
    assert shown.next_stop == "15:12 (in 1h 12m, max runtime stop, extended)"
    assert shown.to_json()["next_stop"]["extended"] is True
