from __future__ import annotations

import math

import pytest

from ds01.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("30m", 1800), ("1.5h", 5400), ("7d", 604800), ("250ms", 0.25), (5, 5)],
)
def test_parse(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["30 minutes", "-5s", "", "h", True])
def test_parse_rejects(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_format():
    assert format_duration(42) == "42s"
    assert format_duration(125) == "2m 5s"
    assert format_duration(3600 + 300) == "1h 5m"
    assert format_duration(90000) == "1d 1h"
    assert format_duration(math.inf) == "never"


def test_stop_phrase_is_the_same_everywhere():
    from datetime import UTC, datetime

    from ds01.durations import format_clock, format_stop

    now = datetime(2026, 11, 29, 17, 45, tzinfo=UTC).timestamp()
    assert format_stop(now + 29 * 60, now, "idle", UTC) == "18:14 (in 29m, idle)"
    assert format_stop(now - 90, now, "runtime", UTC) == "17:43 (due 1m 30s ago, max runtime)"
    assert format_clock(now + 86400, now, UTC) == "Mon 17:45"
    assert format_clock(now + 30 * 86400, now, UTC) == "2026-12-29 17:45"
