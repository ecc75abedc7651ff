"""The supervised components start on their own ports, answer, and leave nothing behind."""

from __future__ import annotations

import sys

import pytest
import requests

from ds01.stack import ChildProcess, StackError, free_port

pytestmark = pytest.mark.integration

PROMETHEUS_SELF = """
global: {scrape_interval: 1s, evaluation_interval: 1s}
scrape_configs:
  - job_name: self
    static_configs: [{targets: ['127.0.0.1:%d']}]
"""

ALERTMANAGER_MINIMAL = """
route: {receiver: none}
receivers: [{name: none}]
"""


def test_prometheus_scrapes_itself_and_stops(prometheus_factory):
    port = free_port()
    server = prometheus_factory(PROMETHEUS_SELF % port, port=port)
    result = requests.get(f"{server.url}/api/v1/query", params={"query": "1+1"}, timeout=5).json()
    assert result["data"]["result"][1] == "2"
    server.stop()
    assert not server.child.running()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{server.url}/-/ready", timeout=2)


def test_alertmanager_answers(alertmanager_factory):
    server = alertmanager_factory(ALERTMANAGER_MINIMAL)
    status = requests.get(f"{server.url}/api/v2/status", timeout=5).json()
    assert status["cluster"]["status"] in ("disabled", "ready")


def test_bad_config_fails_with_log_tail(prometheus_factory):
    with pytest.raises(StackError, match="prometheus exited"):
        prometheus_factory("scrape_configs: [{job_name: }]\n")


def test_child_process_is_killed_even_if_it_ignores_sigterm(tmp_path):
    script = "import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    child = ChildProcess("stubborn", [sys.executable, "-c", script], tmp_path / "log").start()
    child.stop(timeout=0.5)
    assert not child.running()
