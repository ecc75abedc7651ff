"""Live-fact sources: unreachable dependencies are `Unavailable` (retry), not answers."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ds01.stack import free_port
from enforcer.facts import DockerSource, Health, PrometheusSource, Unavailable


def test_missing_docker_socket_is_unavailable(tmp_path):
    source = DockerSource(f"unix://{tmp_path}/docker.sock")

    with pytest.raises(Unavailable) as error:
        source.container("c" * 64)
    assert error.value.dependency == "docker"
    assert source.ping() is False


def test_closed_prometheus_port_is_unavailable():
    source = PrometheusSource(f"http://127.0.0.1:{free_port()}")

    with pytest.raises(Unavailable) as error:
        source.deadlines("c" * 64, reason="idle")
    assert error.value.dependency == "prometheus"
    assert source.ready() is False


class EmptyAnswers(BaseHTTPRequestHandler):
    """Answers every GET with an empty Prometheus result and records the request line's path
    (absolute when the request came through it as a proxy)."""

    def do_GET(self) -> None:
        self.server.paths.append(self.path)  # type: ignore[attr-defined]
        body = json.dumps({"status": "success", "data": {"result": []}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass  # no access log on the test's stderr


@pytest.fixture
def answering_server() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), EmptyAnswers)
    server.paths = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(10)


def proxy_environment(monkeypatch, proxy: str) -> None:
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, proxy)


def test_a_prometheus_on_this_host_is_queried_directly_whatever_proxy_the_environment_names(
    monkeypatch, answering_server
):
    proxy_environment(monkeypatch, f"http://127.0.0.1:{free_port()}")  # nothing listens there
    port = answering_server.server_address[1]

    for host in ("127.0.0.1", "localhost"):
        source = PrometheusSource(f"http://{host}:{port}")
        assert source.query("up") == []
        assert source.ready() is True
    assert all(path.startswith("/") for path in answering_server.paths)


def test_a_remote_prometheus_keeps_the_environments_proxy(monkeypatch, answering_server):
    proxy_environment(monkeypatch, f"http://127.0.0.1:{answering_server.server_address[1]}")
    source = PrometheusSource("http://prometheus.invalid:9090")

    assert source.query("up") == []
    assert answering_server.paths[0].startswith("http://prometheus.invalid:9090/api/v1/query")


def test_each_prometheus_query_gives_way_first_and_a_readiness_check_never_waits(
    answering_server,
):
    seen_by_server: list[int] = []  # how many queries had arrived at each give_way
    port = answering_server.server_address[1]
    source = PrometheusSource(
        f"http://127.0.0.1:{port}",
        give_way=lambda: seen_by_server.append(len(answering_server.paths)),
    )

    assert source.ready() is True and seen_by_server == []  # a webhook's health check
    source.query("up")
    source.query("up")
    assert seen_by_server == [1, 2]  # each before its own query (the ready() was the first)


class Probe(DockerSource):
    """A Docker ping that answers what the test says, counted; `gate` holds it while cleared."""

    def __init__(self) -> None:
        super().__init__(None)
        self.answers: list[bool] = []
        self.up = True
        self.checked = threading.Semaphore(0)
        self.gate = threading.Event()
        self.gate.set()

    def ping(self, timeout: float = 2.0) -> bool:
        assert self.gate.wait(60)
        self.answers.append(self.up)
        self.checked.release()
        return self.up


def health_with(probe: Probe, clock: list[float]) -> Health:
    return Health(
        probe, PrometheusSource("http://127.0.0.1:1"), ttl=5.0, monotonic=lambda: clock[0]
    )


def test_health_caches_and_forgets_on_failure():
    probe, clock = Probe(), [0.0]
    health = health_with(probe, clock)

    assert health.ok("docker") and health.ok("docker")
    assert len(probe.answers) == 1
    health.mark_down("docker")  # a worker saw Docker fail: the next caller checks itself
    assert health.ok("docker")
    assert len(probe.answers) == 2
    clock[0] = 10.0
    assert health.ok("docker")  # stale: answered from the cache, re-checked behind it
    for _ in range(3):
        assert probe.checked.acquire(timeout=30)
    assert len(probe.answers) == 3


def test_a_stale_answer_is_rechecked_in_the_background_and_no_caller_waits_for_the_ping():
    """A slow ping during a webhook burst holds up no ack; the next answer is the fresh one."""
    probe, clock = Probe(), [0.0]
    health = health_with(probe, clock)
    assert health.ok("docker")
    assert probe.checked.acquire(timeout=30)
    probe.up = False  # Docker went away
    probe.gate.clear()  # and its ping hangs
    clock[0] = 10.0
    try:
        answers = [health.ok("docker") for _ in range(3)]  # none waits for the stuck ping
        assert answers == [True, True, True]
        assert len(probe.answers) == 1  # one re-check in flight, not one per caller
    finally:
        probe.gate.set()
    deadline = time.monotonic() + 30
    while health.ok("docker") and time.monotonic() < deadline:  # until the re-check lands
        time.sleep(0.01)
    assert health.ok("docker") is False
    assert probe.answers == [True, False]


@pytest.mark.integration
def test_gone_container_is_none_and_running_one_is_classified(dockerd, containers):
    source = DockerSource(dockerd.url)
    box = containers(gpus=["MIG-x"], labels={"ds01.user": "bob"})

    facts = source.container(box.id)
    assert facts is not None
    assert (facts.name, facts.user, facts.running, facts.gpu_devices) == (
        box.name, "bob", True, ("MIG-x",)
    )  # fmt: skip
    assert source.container("0" * 64) is None
    assert source.ping() is True


@pytest.mark.integration
def test_docker_calls_give_way_first_and_a_health_ping_never_waits(dockerd, containers):
    gave_way: list[str] = []
    source = DockerSource(dockerd.url, give_way=lambda: gave_way.append("before a call"))
    box = containers()

    assert source.ping() is True and gave_way == []  # a webhook's health check
    assert source.container(box.id) is not None
    assert gave_way  # the inspect (and dockerd's default runtime, asked once) waited first


@pytest.mark.integration
def test_deadlines_come_from_prometheus(deadlines, containers):
    box = containers(gpus=["MIG-x"])
    deadlines.publish(box, idle=123.5, runtime=float("inf"), devices=("MIG-x",))
    source = PrometheusSource(deadlines.prometheus.url)

    assert source.deadlines(box.id, reason="idle").idle == 123.5
    assert source.deadlines(box.id, reason="max_runtime").runtime == float("inf")
    assert source.deadlines(box.id, reason="unmanaged").unmanaged is True
    assert source.deadlines("0" * 64, reason="unmanaged").unmanaged is None
    assert source.deadlines("0" * 64, reason="idle").idle is None
