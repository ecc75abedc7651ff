"""Live-fact sources: unreachable dependencies are `Unavailable` (retry), not answers."""

from __future__ import annotations

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


def test_health_caches_and_forgets_on_failure(tmp_path):
    calls = []

    class Probe(DockerSource):
        def ping(self, timeout: float = 2.0) -> bool:
            calls.append(timeout)
            return True

    clock = [0.0]
    health = Health(
        Probe(None), PrometheusSource("http://127.0.0.1:1"), ttl=5.0, monotonic=lambda: clock[0]
    )

    assert health.ok("docker") and health.ok("docker")
    assert len(calls) == 1
    health.mark_down("docker")
    assert health.ok("docker")
    assert len(calls) == 2
    clock[0] = 10.0
    health.ok("docker")
    assert len(calls) == 3


def test_while_one_caller_rechecks_the_others_use_the_last_answer():
    """A slow ping during a webhook burst holds up one ack, not all of them."""
    import threading

    entered, release = threading.Event(), threading.Event()
    calls = []

    class SlowProbe(DockerSource):
        def ping(self, timeout: float = 2.0) -> bool:
            calls.append(timeout)
            if len(calls) == 2:  # the re-check after the cache went stale
                entered.set()
                release.wait(60)
            return True

    clock = [0.0]
    health = Health(
        SlowProbe(None), PrometheusSource("http://127.0.0.1:1"), ttl=5.0,
        monotonic=lambda: clock[0],
    )  # fmt: skip
    assert health.ok("docker")
    clock[0] = 10.0
    checker = threading.Thread(target=health.ok, args=("docker",))
    checker.start()
    assert entered.wait(30)
    answers: list[bool] = []
    other = threading.Thread(target=lambda: answers.append(health.ok("docker")))
    other.start()
    try:
        other.join(30)  # bounds a hang: before the fix it waited for the slow ping
        assert answers == [True]  # answered from the last check while the ping was stuck
        assert len(calls) == 2
    finally:
        release.set()
        checker.join(30)
        other.join(30)


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
def test_deadlines_come_from_prometheus(deadlines, containers):
    box = containers(gpus=["MIG-x"])
    deadlines.publish(box, idle=123.5, runtime=float("inf"), devices=("MIG-x",))
    source = PrometheusSource(deadlines.prometheus.url)

    assert source.deadlines(box.id, reason="idle").idle == 123.5
    assert source.deadlines(box.id, reason="max_runtime").runtime == float("inf")
    assert source.deadlines(box.id, reason="unmanaged").unmanaged is True
    assert source.deadlines("0" * 64, reason="unmanaged").unmanaged is None
    assert source.deadlines("0" * 64, reason="idle").idle is None
