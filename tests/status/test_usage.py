"""The GPU-hours queries and their text: one user's windows, quoted safely."""

from __future__ import annotations

from ds01.gpu_status.usage import UsageWindow, label_value, render_usage, usage_query


def test_the_query_sums_the_recorded_samples_of_the_window():
    assert usage_query(kind="idle", selector='user="ann"', window="7d") == (
        'sum(sum_over_time(ds01:user_gpu_idle:gpu_hours{user="ann"}[7d]))'
    )


def test_a_user_name_cannot_break_out_of_the_label_value():
    assert label_value('a"b\\c') == 'a\\"b\\\\c'


def test_the_text_has_both_windows_with_two_decimals():
    text = render_usage("ann", [UsageWindow("7d", 1.5, 1.0, 0.5), UsageWindow("30d", 10, 4, 6)])
    lines = text.splitlines()
    assert lines[2].split() == ["7d", "1.50", "1.00", "0.50"]
    assert lines[3].split() == ["30d", "10.00", "4.00", "6.00"]
