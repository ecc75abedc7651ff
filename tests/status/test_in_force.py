"""`gpu-status --mine`: next stop with its kind, keep-alive with its end, exemptions — in
local time and humanised, never a Go timestamp."""

from __future__ import annotations

from datetime import UTC, datetime

from ds01.gpu_status.in_force import in_force_lines

NOW = datetime(2026, 11, 30, 14, 0, tzinfo=UTC).timestamp()


def test_keep_alive_exemption_and_next_deadline_read_like_speech():
    document = {
        "user": "carol",
        "containers": [
            {
                "container": "train",
                "device": "0:2 (1g.18gb)",
                "next_stop": {"kind": "max_runtime", "at": NOW + 4320},
                "keep_alive": True,
                "keep_alive_until": NOW + 3600,
            },
            {
                "container": "nb",
                "device": "1 (full GPU)",
                "next_stop": None,
                "keep_alive": True,
                "keep_alive_until": None,
            },
        ],
        "exemptions": [
            {"from": ["idle"], "until": datetime(2027, 1, 31, tzinfo=UTC).timestamp(),
             "reason": "thesis deadline"}
        ],
    }  # fmt: skip
    assert in_force_lines(document, now=NOW, tz=UTC) == (
        "In force for carol:\n"
        "  train on 0:2 (1g.18gb): next max runtime stop 15:12 (in 1h 12m); "
        "keep-alive until 15:00 (in 1h)\n"
        "  nb on 1 (full GPU): no stop scheduled; keep-alive on\n"
        "  exempt from idle until 2027-01-31 00:00 (thesis deadline)\n"
    )
    assert "+0000" not in in_force_lines(document, now=NOW, tz=UTC)


def test_nothing_in_force_says_so():
    empty = {"user": "dave", "containers": [], "exemptions": []}
    assert in_force_lines(empty, now=NOW) == (
        "In force for dave:\n  nothing: no GPU container and no exemption\n"
    )
