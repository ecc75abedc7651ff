"""Waiting for a GPU inside the create call: FIFO across clients, the failure message, and
every way a request can go wrong (bad JSON, oversize, a client that leaves, a slow client,
dockerd or the allocator down) — each a clear error, with nothing leaked.
"""

from __future__ import annotations

import json
import socket
import subprocess
import uuid

import pytest

from allocator.gateway import GatewaySettings
from tests.gateway.clients import (
    DEBIAN_DOCKER,
    compose_binary,
    gpu_compose_file,
    require_docker_cli,
    run_as,
    start_as,
    user_env,
    write_as_owner,
)
from tests.harness.waiting import eventually

pytestmark = pytest.mark.integration
WAIT = 30.0  # bounds a hang; never an expectation of speed


def raw_request(path, data: bytes, *, read: bool = True, timeout: float = 30.0):
    """Send bytes on a fresh connection; (status, JSON body or text) of the answer."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(data)
        if not read:
            return None
        answer = b""
        while b"\r\n\r\n" not in answer:
            piece = sock.recv(65536)
            if not piece:
                break
            answer += piece
        head, _, body = answer.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == b"content-length":
                length = int(value)
        while len(body) < length:
            piece = sock.recv(65536)
            if not piece:
                break
            body += piece
        status = int(head.split(b" ")[1])
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body.decode(errors="replace")


def create_request(body: bytes, *, name: str = "") -> bytes:
    query = f"?name={name}" if name else ""
    return (
        f"POST /v1.41/containers/create{query} HTTP/1.1\r\nHost: docker\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def gpu_body(image: str, count: int = 1) -> bytes:
    return json.dumps(
        {
            "Image": image,
            "Cmd": ["sleep", "600"],
            "HostConfig": {
                "NetworkMode": "none",
                "DeviceRequests": [{"Count": count, "Capabilities": [["gpu"]]}],
            },
        }
    ).encode()


def take_every_device(stack) -> list[str]:
    """Root reserves every device through the allocator; returns the allocation ids."""
    client = stack.allocator_client()
    return [client.allocate(count=1, name=f"hog-{i}")["id"] for i in range(len(stack.devices))]


def queue_length(stack) -> int:
    return len(stack.allocator.queue)


@pytest.fixture(scope="module")
def docker_cli() -> str:
    return require_docker_cli(DEBIAN_DOCKER)


def test_docker_run_and_compose_up_wait_in_fifo_order(
    gateway_factory,
    docker_cli,
    unprivileged_users,
    user_workdir,
):
    compose = compose_binary()
    stack = gateway_factory(policy={"gpu_wait": "60s"})
    alice, bob = unprivileged_users
    env = {"DOCKER_HOST": stack.docker_host}
    hogs = take_every_device(stack)
    first = f"fifo-run-{uuid.uuid4().hex[:6]}"
    run = start_as(
        alice,
        [docker_cli, "run", "-d", "--name", first, "--gpus", "1", "--network", "none"]
        + [stack.image, "sleep", "600"],
        env=env,
    )
    eventually(lambda: queue_length(stack) == 1, WAIT, "docker run queued")
    project = user_workdir(bob)
    write_as_owner(
        bob,
        project / "docker-compose.yml",
        gpu_compose_file(stack.image, service="train", command=["sleep", "600"], count=1),
    )
    up = start_as(bob, [compose, "up", "-d"], env=env, cwd=project)
    eventually(lambda: queue_length(stack) == 2, WAIT, "compose up queued behind docker run")
    assert run.poll() is None and up.poll() is None  # both block inside their create call

    client = stack.allocator_client()
    client.release(hogs[0])
    assert run.wait(WAIT) == 0, run.stderr.read()
    assert up.poll() is None  # second in line: still waiting
    assert queue_length(stack) == 1
    client.release(hogs[1])
    assert up.wait(WAIT) == 0, up.stderr.read()

    mine = stack.docker.api.inspect_container(first)["Config"]["Labels"]
    assert mine["ds01.user"] == alice.name and mine["ds01.type"] == "docker"
    [service] = stack.docker.containers.list(filters={"label": "com.docker.compose.service=train"})
    assert service.labels["ds01.user"] == bob.name and service.labels["ds01.type"] == "compose"
    assert run_as(bob, [compose, "down"], env=env, cwd=project).returncode == 0


def test_after_gpu_wait_both_clients_print_the_allocation_failed_message(
    gateway_factory,
    docker_cli,
    unprivileged_users,
    user_workdir,
):
    compose = compose_binary()
    stack = gateway_factory(policy={"gpu_wait": "3s"})
    alice, bob = unprivileged_users
    env = {"DOCKER_HOST": stack.docker_host}
    take_every_device(stack)
    refused = run_as(
        alice,
        [docker_cli, "run", "--rm", "--gpus", "1", "--network", "none", stack.image, "true"],
        env=env,
    )
    assert refused.returncode != 0
    assert "GPU allocation failed after 3 seconds." in refused.stderr
    assert "Suggestions:" in refused.stderr and "gpu-status" in refused.stderr
    project = user_workdir(bob)
    write_as_owner(
        bob,
        project / "docker-compose.yml",
        gpu_compose_file(stack.image, service="job", command=["true"], count="all"),
    )
    up = run_as(bob, [compose, "up", "-d"], env=env, cwd=project)
    assert up.returncode != 0 and "GPU allocation failed after 3 seconds." in up.stderr
    assert not [a for a in stack.allocator.live() if a.user in (alice.name, bob.name)]
    run_as(bob, [compose, "down"], env=env, cwd=project)


def test_quota_refusal_answers_at_once_with_numbers(
    gateway_factory, docker_cli, unprivileged_users
):
    stack = gateway_factory()
    alice = unprivileged_users[0]
    refused = run_as(
        alice,
        [docker_cli, "create", "--gpus", "3", "--network", "none", stack.image, "true"],
        env={"DOCKER_HOST": stack.docker_host},
    )
    assert refused.returncode != 0 and "2" in refused.stderr and "quota" in refused.stderr.lower()


# --- bad input ------------------------------------------------------------------------------


def test_malformed_json_and_malformed_heads_get_400(gateway_stack):
    status, body = raw_request(gateway_stack.socket_path, create_request(b"{not json"))
    assert status == 400 and "not valid JSON" in body["message"]
    status, body = raw_request(gateway_stack.socket_path, create_request(b"[1, 2]"))
    assert status == 400 and "JSON object" in body["message"]
    status, body = raw_request(gateway_stack.socket_path, b"NONSENSE\r\n\r\n")
    assert status == 400 and "malformed" in body["message"]
    bad_labels = json.dumps({"Image": gateway_stack.image, "Labels": ["a"]}).encode()
    status, body = raw_request(gateway_stack.socket_path, create_request(bad_labels))
    assert status == 400 and "Labels" in body["message"]


def test_an_oversize_create_body_is_refused_without_reading_it_all(gateway_factory):
    stack = gateway_factory(policy={"gateway": {"max_create_body": 65536}})
    huge = json.dumps({"Image": stack.image, "Env": ["X=" + "a" * 200000]}).encode()
    name = f"huge-{uuid.uuid4().hex[:6]}"
    status, body = raw_request(stack.socket_path, create_request(huge, name=name))
    assert status == 413 and "65536" in body["message"]
    assert not stack.docker.containers.list(all=True, filters={"name": name})


def test_a_client_that_leaves_mid_wait_leaves_the_queue_and_holds_nothing(gateway_factory):
    stack = gateway_factory(policy={"gpu_wait": "60s"})
    hogs = take_every_device(stack)
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(str(stack.socket_path))
    sock.sendall(create_request(gpu_body(stack.image)))
    eventually(lambda: queue_length(stack) == 1, WAIT, "the create queued")
    sock.close()
    eventually(lambda: queue_length(stack) == 0, WAIT, "the ticket left the queue")
    client = stack.allocator_client()
    client.release(hogs[0])
    live = {a.id for a in stack.allocator.live()}
    assert live == set(hogs[1:])  # nobody got the freed device: the leaver holds nothing
    assert not stack.docker.containers.list(all=True)


def test_a_slow_client_is_timed_out_and_others_are_served_meanwhile(gateway_factory):
    stack = gateway_factory(settings=GatewaySettings(read_timeout=1.0, idle_timeout=1.0))
    slow = socket.socket(socket.AF_UNIX)
    slow.settimeout(WAIT)
    slow.connect(str(stack.socket_path))
    slow.sendall(b"POST /v1.41/containers/create HTTP/1.1\r\nContent-Length: 100\r\n\r\n{")
    status, _ = raw_request(stack.socket_path, b"GET /_ping HTTP/1.1\r\nHost: d\r\n\r\n")
    assert status == 200  # one stalled client blocks nobody
    answer = b""
    while True:
        piece = slow.recv(4096)
        if not piece:
            break
        answer += piece
    assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive in time" in answer
    slow.close()
    idle = socket.socket(socket.AF_UNIX)
    idle.settimeout(WAIT)
    idle.connect(str(stack.socket_path))
    assert idle.recv(10) == b""  # a silent kept-alive connection is closed after idle_timeout
    idle.close()


def test_dockerd_down_is_a_clear_502(gateway_factory, tmp_path):
    stack = gateway_factory(policy={"gateway": {"docker_socket": str(tmp_path / "gone.sock")}})
    status, body = raw_request(stack.socket_path, b"GET /_ping HTTP/1.1\r\nHost: d\r\n\r\n")
    assert status == 502 and "cannot reach dockerd" in body["message"]


def test_allocator_down_refuses_gpu_creates_clearly_and_passes_the_rest(
    gateway_factory, docker_cli
):
    stack = gateway_factory()
    stack.runtime.server.close()  # the allocator stops answering
    env = {"DOCKER_HOST": stack.docker_host}
    gpu = subprocess.run(
        [docker_cli, "create", "--gpus", "1", "--network", "none", stack.image, "true"],
        env=user_env("root", env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert gpu.returncode != 0 and "cannot reach the GPU allocator" in gpu.stderr
    plain = subprocess.run(
        [docker_cli, "run", "--rm", "--network", "none", stack.image, "true"],
        env=user_env("root", env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert plain.returncode == 0, plain.stderr


def test_a_failed_create_releases_its_grant_at_once(gateway_stack):
    """dockerd refuses (no such image): the reservation must not wait for reservation_ttl."""
    body = json.loads(gpu_body(gateway_stack.image))
    body["Image"] = "no-such-image:missing"
    status, answer = raw_request(
        gateway_stack.socket_path, create_request(json.dumps(body).encode())
    )
    assert status == 404 and "no-such-image" in answer["message"]
    assert WAIT < gateway_stack.policy.reservation_ttl  # so the expiry cannot be what frees it
    eventually(
        lambda: not [a for a in gateway_stack.allocator.live() if a.state == "reserved"],
        WAIT,
        "the grant released",
    )
