"""The Prometheus client: answers parsed, every failure one line naming the URL and the cause."""

from __future__ import annotations

import json
import math

import pytest

from ds01.gpu_status.query import PrometheusClient, PrometheusError
from ds01.stack import free_port
from tests.status.servers import FixedPrometheus, serve


def test_parses_values_including_infinity():
    handler = FixedPrometheus(
        {"up": [{"metric": {"__name__": "up", "job": "x"}, "value": [1.5, "+Inf"]}]}
    )
    with serve(handler) as url:
        (sample,) = PrometheusClient(url).query("up", at=1.5)
    assert sample.name == "up" and math.isinf(sample.value) and sample.timestamp == 1.5
    assert handler.queries[0]["time"] == "1.500"


def test_dead_url_names_url_and_cause():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(PrometheusError) as caught:
        PrometheusClient(url).query("up")
    assert str(caught.value) == f"cannot query Prometheus at {url}: Connection refused"


def test_query_error_names_the_prometheus_error():
    with serve(FixedPrometheus({})) as url:
        with pytest.raises(PrometheusError) as caught:
            PrometheusClient(url).query("nope")
    assert "HTTP 400, bad_data: unexpected nope" in str(caught.value)
    assert url in str(caught.value)


def test_not_prometheus_is_said_plainly():
    def html(path, params):
        return 200, "text/html", b"<html>hello</html>"

    def broken(path, params):
        return 502, "text/plain", b"bad gateway"

    with serve(html) as url:
        with pytest.raises(PrometheusError, match="not Prometheus API JSON"):
            PrometheusClient(url).query("up")
    with serve(broken) as url:
        with pytest.raises(PrometheusError, match="HTTP 502"):
            PrometheusClient(url).query("up")


def test_matrix_result_is_refused():
    def matrix(path, params):
        body = {"status": "success", "data": {"resultType": "matrix", "result": []}}
        return 200, "application/json", json.dumps(body).encode()

    with serve(matrix) as url:
        with pytest.raises(PrometheusError, match="expected an instant vector"):
            PrometheusClient(url).query("up[1m]")


def test_url_without_scheme_is_refused():
    with pytest.raises(PrometheusError, match="not an http:// or https:// URL"):
        PrometheusClient("localhost:9090").query("up")
