"""The supervised components start on their own ports, answer, and leave nothing behind."""

from __future__ import annotations

import sys

import pytest
import requests

from ds01.stack import ChildProcess, StackError, free_port
from tests.harness.waiting import eventually

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


def test_alertmanager_answers_only_with_a_password(alertmanager_factory):
    server = alertmanager_factory(ALERTMANAGER_MINIMAL)
    status = requests.get(f"{server.url}/api/v2/status", timeout=5, auth=server.auth).json()
    assert status["cluster"]["status"] == "disabled"  # no cluster port
    assert requests.get(f"{server.url}/api/v2/status", timeout=5).status_code == 401
    wrong = (server.admin.username, "guess") if server.admin else None
    assert requests.get(f"{server.url}/api/v2/status", timeout=5, auth=wrong).status_code == 401
    web = (server.workdir / "web.yml").read_text()
    assert server.admin is not None and server.admin.password not in web  # hashes only
    for name in ("web.yml", "prometheus.password", "admin.password"):
        assert (server.workdir / name).stat().st_mode & 0o777 == 0o600


def test_prometheus_reloads_on_sighup_without_the_lifecycle_api(prometheus_factory):
    port = free_port()
    server = prometheus_factory(PROMETHEUS_SELF % port, port=port)
    assert requests.post(f"{server.url}/-/reload", timeout=5).status_code == 403
    rule = "groups: [{name: t, rules: [{record: ds01_test_two, expr: '1+1'}]}]\n"
    (server.workdir / "extra.rules.yml").write_text(rule)
    config = server.workdir / "prometheus.yml"
    config.write_text(config.read_text() + "rule_files: [extra.rules.yml]\n")

    server.reload()

    def recorded() -> bool:
        query = {"query": "ds01_test_two"}
        reply = requests.get(f"{server.url}/api/v1/query", params=query, timeout=5).json()
        return bool(reply["data"]["result"])

    eventually(recorded, 30, "the rule added by a SIGHUP reload")


def test_bad_config_fails_with_log_tail(prometheus_factory):
    with pytest.raises(StackError, match="prometheus exited"):
        prometheus_factory("scrape_configs: [{job_name: }]\n")


def test_child_process_is_killed_even_if_it_ignores_sigterm(tmp_path):
    script = "import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    child = ChildProcess("stubborn", [sys.executable, "-c", script], tmp_path / "log").start()
    child.stop(timeout=0.5)
    assert not child.running()
