"""The executor's failure branches against the real dockerd: a container gone before the act,
and Docker refusing a stop (a proxy in front of the real daemon answers the stop with a 500,
as a daemon does when the runtime cannot kill the task; everything else passes through)."""

from __future__ import annotations

import http.client
import re
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from enforcer.executor import Executor
from enforcer.facts import DockerSource
from enforcer.payload import parse_webhook
from tests.enforcer.conftest import GPU, alert_for, make_policy, webhook
from tests.harness.containers import remove_container

pytestmark = pytest.mark.integration

_STOP = re.compile(r"^(/v[\d.]+)?/containers/[^/]+/stop")


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=30)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(self._path)


def _refusing_proxy(docker_socket: str) -> ThreadingHTTPServer:
    """HTTP on loopback TCP to the real dockerd, except that every stop is refused."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            if self.command == "POST" and _STOP.match(self.path):
                payload = b'{"message":"cannot stop container: permission denied"}'
                self.send_response(500)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                return
            upstream = _UnixConnection(docker_socket)
            headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
            upstream.request(self.command, self.path, body=body, headers=headers)
            answer = upstream.getresponse()
            data = answer.read()
            self.send_response(answer.status)
            for key, value in answer.getheaders():
                if key.lower() not in ("transfer-encoding", "content-length", "connection"):
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            upstream.close()

        do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = _forward

        def log_message(self, *_args) -> None:
            return None

    return ThreadingHTTPServer(("127.0.0.1", 0), Handler)


@pytest.fixture
def refusing_docker(dockerd) -> Iterator[str]:
    server = _refusing_proxy(str(dockerd.socket_path))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"tcp://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _alert(box):
    return parse_webhook(webhook(alert_for(box))).alerts[0]


def test_a_container_gone_before_the_act_is_skipped_gone(dockerd, containers):
    source = DockerSource(dockerd.url)
    executor = Executor(source, policy=make_policy(), notice_path="/workspace/.ds01-alerts")
    box = containers(gpus=[GPU])
    facts = source.container(box.id)
    assert facts is not None and facts.running
    remove_container(box)

    stopped = executor.stop(facts, _alert(box))
    removed = executor.remove(facts)
    notified = executor.notify(facts, _alert(box))

    assert (stopped.result, stopped.decision) == ("skipped", "skipped: gone")
    assert (removed.result, removed.decision) == ("skipped", "skipped: gone")
    assert notified.result == "failed"
    assert notified.detail.startswith("notice not written (container gone)")


def test_docker_refusing_the_stop_is_recorded_as_failed_stop_refused(refusing_docker, containers):
    source = DockerSource(refusing_docker)
    executor = Executor(source, policy=make_policy(), notice_path="/workspace/.ds01-alerts")
    box = containers(gpus=[GPU])
    facts = source.container(box.id)
    assert facts is not None

    outcome = executor.stop(facts, _alert(box))

    assert (outcome.result, outcome.decision) == ("failed", "failed: stop refused")
    assert "permission denied" in outcome.detail  # Docker's own words reach the audit log
    box.reload()
    assert box.status == "running"


def test_dry_run_removes_nothing(dockerd, containers):
    source = DockerSource(dockerd.url)
    executor = Executor(
        source, policy=make_policy(), notice_path="/workspace/.ds01-alerts", dry_run=True
    )
    box = containers(gpus=[GPU])
    box.stop(timeout=0)
    facts = source.container(box.id)
    assert facts is not None

    outcome = executor.remove(facts)

    assert (outcome.result, outcome.decision) == ("dry_run", "dry-run: would remove")
    box.reload()
    assert box.status == "exited"


def test_docker_refusing_a_removal_is_recorded_as_failed_remove_refused(dockerd, containers):
    source = DockerSource(dockerd.url)
    executor = Executor(source, policy=make_policy(), notice_path="/workspace/.ds01-alerts")
    box = containers(gpus=[GPU])  # running: dockerd refuses to remove it without force
    facts = source.container(box.id)
    assert facts is not None

    outcome = executor.remove(facts)

    assert (outcome.result, outcome.decision) == ("failed", "failed: remove refused")
    assert "running" in outcome.detail.lower()
    box.reload()
    assert box.status == "running"
