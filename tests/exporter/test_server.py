"""The HTTP endpoints on a real waitress server: /metrics, /api/state, /healthz."""

from __future__ import annotations

import dataclasses
import gzip
import math
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from ds01.containers import ContainerFacts
from exporter.exposition import Exposition
from exporter.health import ErrorCounters
from exporter.metrics import SnapshotCollector
from exporter.server import HttpServer, make_app
from exporter.snapshot import ContainerState, Snapshot, snapshot_json
from tests.exporter.helpers import parse, value


@pytest.fixture
def published():
    facts = ContainerFacts(
        "b" * 64, "job", "img", "docker", "u", False, "", ("MIG-1",), True, 1.0, 1.0
    )
    state = ContainerState(
        facts, "student", False, 1.0, 1.0, False, 1801.0, "timeout", math.inf, "exempt"
    )
    return {"snapshot": Snapshot(100.0, 0.01, "sim", (), (state,)), "healthy": True}


@pytest.fixture
def server(published):
    metrics = SnapshotCollector(
        lambda: published["snapshot"], ErrorCounters(), version="t", backend="sim"
    )
    exposition = Exposition(metrics.health_metrics)
    app = make_app(
        lambda accept, encoding: exposition.render(published["snapshot"], accept, encoding),
        lambda: snapshot_json(published["snapshot"]),
        lambda: (published["healthy"], {"detail": 1}),
    )
    http = HttpServer(app, "127.0.0.1", 0)
    http.start()
    yield f"http://127.0.0.1:{http.port}", http
    http.close()


def test_metrics_endpoint_serves_prometheus_text(server):
    url, _ = server
    response = requests.get(f"{url}/metrics", timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    samples = parse(response.text)
    assert (
        value(samples, "ds01_container_idle_deadline_timestamp_seconds", container="job") == 1801.0
    )


def test_plain_metrics_body_has_the_length_it_says(server):
    url, _ = server
    response = requests.get(
        f"{url}/metrics", headers={"Accept-Encoding": "identity"}, timeout=5, stream=True
    )
    raw = response.raw.read()
    assert "Content-Encoding" not in response.headers
    assert int(response.headers["Content-Length"]) == len(raw)
    assert raw.endswith(b'ds01_exporter_collect_errors_total{source="state"} 0.0\n')


def test_metrics_endpoint_speaks_openmetrics_when_asked(server):
    url, _ = server
    accept = "application/openmetrics-text; version=1.0.0"
    response = requests.get(f"{url}/metrics", headers={"Accept": accept}, timeout=5)
    assert response.headers["Content-Type"].startswith("application/openmetrics-text")
    assert response.text.endswith("# EOF\n")


def test_metrics_endpoint_compresses_when_asked(server):
    url, _ = server
    headers = {"Accept-Encoding": "gzip"}
    response = requests.get(f"{url}/metrics", headers=headers, timeout=5, stream=True)
    assert response.headers["Content-Encoding"] == "gzip"
    raw = response.raw.read()
    assert int(response.headers["Content-Length"]) == len(raw)  # the parts, counted right
    text = gzip.decompress(raw).decode()
    assert value(parse(text), "ds01_container_busy") == 0
    assert 'ds01_exporter_collect_errors_total{source="docker"} 0.0' in text


def test_a_new_snapshot_is_served_not_the_cached_one(server, published):
    url, _ = server
    assert value(parse(requests.get(f"{url}/metrics", timeout=5).text), "ds01_container_busy") == 0
    old = published["snapshot"]
    state = dataclasses.replace(old.containers[0], busy=True)
    published["snapshot"] = dataclasses.replace(old, timestamp=200.0, containers=(state,))
    samples = parse(requests.get(f"{url}/metrics", timeout=5).text)
    assert value(samples, "ds01_container_busy") == 1
    assert value(samples, "ds01_exporter_last_collect_timestamp_seconds") == 200.0


def test_state_endpoint_serves_json(server):
    url, _ = server
    doc = requests.get(f"{url}/api/state", timeout=5).json()
    assert doc["collected_at"] == 100.0
    assert doc["containers"][0]["runtime_deadline"] is None
    assert doc["containers"][0]["runtime_deadline_reason"] == "exempt"


def test_healthz_reports_failure_with_503(server, published):
    url, _ = server
    assert requests.get(f"{url}/healthz", timeout=5).json() == {"status": "ok", "detail": 1}
    published["healthy"] = False
    response = requests.get(f"{url}/healthz", timeout=5)
    assert response.status_code == 503 and response.json()["status"] == "failing"


def test_concurrent_scrapes_all_answer(server):
    url, _ = server

    def one(_):
        return requests.get(f"{url}/metrics", timeout=10).status_code

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(one, range(64))) == {200}


def test_close_stops_serving(server):
    url, http = server
    http.close()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/metrics", timeout=2)
