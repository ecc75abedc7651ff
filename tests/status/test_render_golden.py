"""Screenshot-free check of the terminal output: rendered from a fixed answer over real HTTP."""

from __future__ import annotations

import io
import json
import os
from datetime import UTC

from ds01.clock import FrozenClock
from ds01.gpu_status import main
from tests.status.conftest import check_golden

UPDATE = os.environ.get("DS01_UPDATE_GOLDEN") == "1"


def run(url: str, now: float, *args: str) -> str:
    out = io.StringIO()
    code = main(["--prometheus-url", url, *args], clock=FrozenClock(now), out=out, tz=UTC)
    assert code == 0
    return out.getvalue()


def test_default_view_matches_golden(answer, fixed_prometheus):
    url = fixed_prometheus(answer)
    check_golden("default.txt", run(url, answer["now"]), UPDATE)


def test_user_filter_matches_golden(answer, fixed_prometheus):
    url = fixed_prometheus(answer)
    check_golden("user-bob.txt", run(url, answer["now"], "--user", "bob"), UPDATE)


def test_stale_exporter_warning_above_table(answer, fixed_prometheus):
    answer["last_collect"][0]["value"][1] = str(answer["now"] - 200)
    url = fixed_prometheus(answer)
    text = run(url, answer["now"])
    check_golden("stale.txt", text, UPDATE)
    first = text.splitlines()[0]
    assert first.startswith("WARNING: exporter data is stale: last collection 3m 20s ago")


def test_missing_exporter_data_is_a_warning(answer, fixed_prometheus):
    answer["last_collect"] = []
    url = fixed_prometheus(answer)
    first = run(url, answer["now"]).splitlines()[0]
    assert first.startswith("WARNING: no exporter data in Prometheus")


def test_json_matches_golden(answer, fixed_prometheus):
    url = fixed_prometheus(answer)
    text = run(url, answer["now"], "--json").replace(url, "http://prometheus.test")
    check_golden("default.json", text, UPDATE)
    document = json.loads(text)
    assert document["version"] == 1


def test_colour_only_when_asked(answer, fixed_prometheus, monkeypatch):
    url = fixed_prometheus(answer)
    assert "\033[" not in run(url, answer["now"])  # a StringIO is not a terminal
    assert "\033[" in run(url, answer["now"], "--color", "always")
    assert "\033[" not in run(url, answer["now"], "--color", "never")
