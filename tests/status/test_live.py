"""gpu-status and the dashboards against a live Prometheus scraping a live exporter (sim
backend, real containers on the private dockerd), loaded with the repository's rules."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import requests

from ds01.stack import free_port
from tests.harness.waiting import eventually
from tests.status.dashboards import label_values, load_dashboards, queries, substitute
from tests.status.live import REPO

pytestmark = pytest.mark.integration


def gpu_status(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ds01.gpu_status", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env=env,
    )


def rows_of(stdout: str) -> dict[str, list[str]]:
    """Table rows by device (first column), split on runs of 2+ spaces; the table ends at the
    summary line (what is in force for a user follows it)."""
    import re

    lines = stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("DEV "))
    end = next(i for i, line in enumerate(lines) if line.startswith("Free:"))
    table = lines[header + 1 : end]
    return {cells[0]: cells for cells in (re.split(r"\s{2,}", line) for line in table)}


def test_table_has_a_row_per_device_with_the_right_holder(live):
    done = gpu_status("--prometheus-url", live.prometheus_url)
    assert done.returncode == 0, done.stderr
    rows = rows_of(done.stdout)
    assert len(rows) == 5  # 4 MIG instances of GPU 0, whole GPU 1
    by_profile = {cells[1]: cells for cells in rows.values()}
    busy, idle = by_profile["3g.71gb"], by_profile["2g.35gb"]
    assert busy[3] == "90% busy" and busy[4].startswith("gs-busy-") and busy[5] == "bob"
    assert idle[3] == "0% idle" and idle[4].startswith("gs-idle-") and idle[5] == live.fleet.me
    assert "idle)" in idle[-1]  # stops for idleness (2 s timeout: already due)
    assert sorted(c[4] for c in rows.values() if c[1] == "1g.18gb") == ["(free)", "(reserved)"]
    assert by_profile["full H200"][4] == "(free)"
    assert "gs-cpu" not in done.stdout
    assert done.stdout.splitlines()[-1].startswith("Free: 1g.18gb 1 of 2 · 2g.35gb 0 of 1")
    assert "Queue: 1 waiting" in done.stdout
    assert "WARNING" not in done.stdout


def test_json_parses_and_matches_the_same_facts(live):
    done = gpu_status("--prometheus-url", live.prometheus_url, "--json")
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    devices = {d["device_uuid"]: d for d in document["devices"]}
    assert set(devices) == set(live.fleet.devices.values())
    busy = devices[live.fleet.devices["0:0"]]
    idle = devices[live.fleet.devices["0:1"]]
    assert busy["state"] == "in_use" and busy["busy"] is True and busy["users"] == ["bob"]
    assert [c["container_id"] for c in busy["containers"]] == [live.fleet.busy_id]
    assert busy["containers"][0]["type"] == "docker"
    assert idle["busy"] is False and idle["users"] == [live.fleet.me]
    assert [c["container_id"] for c in idle["containers"]] == [live.fleet.idle_id]
    assert idle["stop_reason"] == "idle" and idle["stop_at"] <= document["time"] + 2
    assert idle["idle_for_seconds"] > 0
    reserved = devices[live.fleet.devices["0:3"]]
    assert reserved["state"] == "reserved" and reserved["allocation"]["user"] == "carol"
    assert devices[live.fleet.devices["0:2"]]["state"] == "free"
    assert document["summary"]["queue_length"] == 1
    assert document["exporter"]["stale"] is False and document["warnings"] == []
    free = {(f["profile"], f["kind"]): f["free"] for f in document["summary"]["free"]}
    assert free == {
        ("1g.18gb", "mig"): 1,
        ("2g.35gb", "mig"): 0,
        ("3g.71gb", "mig"): 0,
        ("", "gpu"): 1,
    }


def test_mine_and_user_filter(live):
    mine = json.loads(
        gpu_status("--prometheus-url", live.prometheus_url, "--mine", "--json").stdout
    )
    assert mine["user_filter"] == live.fleet.me
    assert [d["device_uuid"] for d in mine["devices"]] == [live.fleet.devices["0:1"]]
    text = gpu_status("--prometheus-url", live.prometheus_url, "--user", "bob").stdout
    assert list(rows_of(text)) and all(c[5] == "bob" for c in rows_of(text).values())
    assert "\nIn force for bob:\n" in text
    nobody = gpu_status("--prometheus-url", live.prometheus_url, "--user", "zed").stdout
    assert "No GPU or MIG device is held by zed." in nobody


def test_url_from_environment(live):
    env = {"DS01_PROMETHEUS_URL": live.prometheus_url, "PATH": "/usr/bin:/bin", "NO_COLOR": "1"}
    done = gpu_status("--json", env=env)
    assert done.returncode == 0 and json.loads(done.stdout)["prometheus_url"] == live.prometheus_url


def test_dead_prometheus_url_one_line_exit_2():
    url = f"http://127.0.0.1:{free_port()}"
    done = gpu_status("--prometheus-url", url)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [
        f"gpu-status: cannot query Prometheus at {url}: Connection refused"
    ]


# --- dashboards ------------------------------------------------------------------------------

GRAFANA_VALUES = {
    "__range": "5m",
    "__range_s": "300",
    "__range_ms": "300000",
    "__interval": "1s",
    "__interval_ms": "1000",
    "__rate_interval": "10s",  # Grafana: max(4 x scrape interval, interval + scrape interval)
}


def evaluate(url: str, expr: str, instant: bool) -> int:
    """Number of series (or label values) the query returns; raises on a PromQL error."""
    selector_label = label_values(expr)
    if selector_label is not None:
        selector, label = selector_label
        params = {"match[]": selector} if selector else {}
        answer = requests.get(f"{url}/api/v1/label/{label}/values", params=params, timeout=10)
        return len(answer.json()["data"])
    now = time.time()
    if instant:
        answer = requests.get(
            f"{url}/api/v1/query", params={"query": expr, "time": now}, timeout=10
        )
    else:
        params = {"query": expr, "start": now - 60, "end": now, "step": "1"}
        answer = requests.get(f"{url}/api/v1/query_range", params=params, timeout=10)
    body = answer.json()
    if body["status"] != "success":
        raise AssertionError(f"{expr}: {body.get('errorType')}: {body.get('error')}")
    if not instant:
        return sum(1 for series in body["data"]["result"] if series["values"])
    return len(body["data"]["result"])


def test_every_dashboard_query_returns_data(live):
    values = {
        **GRAFANA_VALUES,
        "user": live.fleet.me,
        "node": ".*",  # Grafana's "All" (allValue)
        "datasource": "ds01-prometheus",
    }
    pending = [
        (query.dashboard, query.where, substitute(query.expr, values), query.instant)
        for name, board in load_dashboards().items()
        for query in queries(name, board)
    ]
    assert len(pending) > 20

    def still_empty() -> list[str]:
        return [
            f"{board} {where}: {expr}"
            for board, where, expr, instant in pending
            if evaluate(live.prometheus_url, expr, instant) == 0
        ]

    empty: list[str] = []

    def all_answered() -> bool:
        empty[:] = still_empty()
        return not empty

    try:
        eventually(all_answered, 45, "every dashboard query to return data", interval=0.5)
    except AssertionError:
        pytest.fail("queries without data:\n" + "\n".join(empty), pytrace=False)


def test_stale_exporter_warning_when_the_exporter_stops_answering(live):
    """Runs last: pauses the exporter (SIGSTOP) so its scrapes fail, then lets it go on."""
    args = ("--prometheus-url", live.prometheus_url, "--stale-after", "3s")
    assert "WARNING" not in gpu_status(*args).stdout
    live.exporter.signal(signal.SIGSTOP)
    try:
        text = eventually(
            lambda: (
                (out := gpu_status(*args).stdout).startswith("WARNING: exporter data is stale")
                and out
            ),
            30,
            "the stale-exporter warning",
            interval=0.5,
        )
    finally:
        live.exporter.signal(signal.SIGCONT)
    # Prometheus marks a failed target's series stale, so only the warning explains the gap.
    assert "No GPU or MIG device in Prometheus' current data." in text
