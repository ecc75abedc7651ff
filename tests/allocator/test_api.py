"""The allocator over its real Unix socket (waitress in a thread), without Docker."""

from __future__ import annotations

import json
import os
import socket
import threading

import pytest

from allocator.client import AllocatorClient, Refused
from tests.allocator.conftest import WAIT, as_user
from tests.harness.components import require_root
from tests.harness.waiting import eventually


def _metric(client: AllocatorClient, name: str, **labels: str) -> float | None:
    from prometheus_client.parser import text_string_to_metric_families

    conn = client._connection()
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


def test_grant_reserves_a_mig_device_and_exports_it(client):
    alloc = as_user(client, "alice").allocate(count=1)
    assert alloc["user"] == "alice" and alloc["state"] == "reserved"
    assert alloc["devices"][0].startswith("MIG-")
    assert (
        _metric(
            client,
            "ds01_allocation_device",
            allocation=alloc["id"],
            user="alice",
            group="student",
            device_uuid=alloc["devices"][0],
            state="reserved",
            container_id="",
        )
        == 1.0
    )
    assert _metric(client, "ds01_allocator_grants_total") == 1.0
    assert _metric(client, "ds01_allocator_devices_free", profile="1g.18gb") == 1.0


def test_error_counters_start_at_zero_and_count_a_failing_gpu_read(client, sim_state):
    for source in ("docker", "gpu", "tick"):
        assert _metric(client, "ds01_allocator_errors_total", source=source) == 0.0
    sim_state.path.write_text("{not json")  # the sim backend cannot read its device state
    client.devices()  # a fresh GPU reading (inventory_refresh 0 in tests)
    assert _metric(client, "ds01_allocator_errors_total", source="gpu") >= 1.0


def test_a_student_at_quota_is_refused_at_once_with_both_numbers(client):
    alice = as_user(client, "alice")
    alice.allocate()
    alice.allocate()
    with pytest.raises(Refused) as refused:
        alice.allocate()
    assert refused.value.status == 403 and refused.value.reason == "quota"
    assert "holds 2 of 2" in refused.value.message
    assert refused.value.payload["holding"] == 2 and refused.value.payload["max_gpus"] == 2
    assert _metric(client, "ds01_allocator_denials_total", reason="quota") == 1.0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"count": 0}, "count"),
        ({"count": "two"}, "count"),
        ({"profile": "big"}, "profile"),
        ({"full_gpu": "yes"}, "full_gpu"),
        ({"type": "vm"}, "type"),
        ({"wait": -1}, "wait"),
    ],
)
def test_bad_input_is_a_clear_400(client, body, field):
    status, answer = client.call("POST", "/v1/allocations", body)
    assert status == 400 and answer["message"].startswith(field)


def test_bad_poll_wait_is_a_400(client):
    status, answer = client.call("GET", "/v1/tickets/t-x?wait=soon")
    assert status == 400 and answer["message"].startswith("wait")


def test_unknown_ticket_is_a_404(client):
    status, answer = client.call("GET", "/v1/tickets/t-unknown")
    assert status == 404 and "restarted" in answer["message"]


def test_not_json_is_a_400(client):
    conn = client._connection()
    conn.request("POST", "/v1/allocations", body=b"count=1")
    response = conn.getresponse()
    assert response.status == 400
    assert "JSON" in json.loads(response.read())["message"]


def test_whole_gpu_refused_for_a_student_and_unknown_profile_refused(client):
    alice = as_user(client, "alice")
    with pytest.raises(Refused) as refused:
        alice.allocate(full_gpu=True)
    assert refused.value.reason == "not_allowed"
    with pytest.raises(Refused) as impossible:
        alice.allocate(profile="7g.141gb")
    assert impossible.value.status == 409 and "1g.18gb" in impossible.value.message


def test_admin_may_have_a_whole_gpu(client):
    alloc = client.allocate(full_gpu=True)  # root is in the admin group in the test policy
    assert alloc["devices"][0].startswith("GPU-")


def test_waiting_longer_than_gpu_wait_fails_with_the_helpful_message(allocator_factory):
    runtime = allocator_factory(policy={"gpu_wait": "1s"})
    client = AllocatorClient(str(runtime.socket_path))
    as_user(client, "alice").allocate(profile="3g.71gb")
    progress = []
    with pytest.raises(Refused) as refused:
        as_user(client, "bob").allocate(profile="3g.71gb", poll=0.2, progress=progress.append)
    assert refused.value.reason == "timeout"
    assert refused.value.message.startswith("GPU allocation failed after 1 second.")
    assert "retire" not in refused.value.message  # bob holds nothing he could free
    assert "gpu-status" in refused.value.message
    assert progress and progress[0]["position"] == 1
    assert _metric(client, "ds01_allocator_denials_total", reason="timeout") == 1.0
    with pytest.raises(Refused) as holder:  # alice holds one: she is told how to free it
        as_user(client, "alice").allocate(profile="3g.71gb", poll=0.2)
    assert "1. Free one of your 1 at once: container retire <name>" in holder.value.message
    assert "container stop <name> keeps its GPU for 2s" in holder.value.message


def test_waiters_are_granted_in_fifo_order_on_release(allocator_factory):
    runtime = allocator_factory(policy={"gpu_wait": "30s"})
    client = AllocatorClient(str(runtime.socket_path))
    holder = as_user(client, "alice").allocate(profile="2g.35gb")
    order: list[str] = []
    threads = []
    for user in ("bob", "carol", "dave"):
        thread = threading.Thread(
            target=lambda u=user: order.append(
                (u, as_user(client, u).allocate(profile="2g.35gb", poll=0.2))
            )
        )
        thread.start()
        threads.append(thread)
        expected = len(threads)
        eventually(lambda e=expected: len(runtime.allocator.queue) == e, WAIT, f"{user} queued")
    assert _metric(client, "ds01_allocator_queue_length") == 3.0
    current = holder
    for _ in range(3):
        before = len(order)
        as_user(client, current["user"]).release(current["id"])
        eventually(lambda b=before: len(order) == b + 1, WAIT, "next waiter granted")
        current = order[-1][1]
    for thread in threads:
        thread.join(5)
    assert [user for user, _ in order] == ["bob", "carol", "dave"]


def test_a_reservation_never_bound_expires(allocator_factory):
    runtime = allocator_factory(policy={"reservation_ttl": "0.5s"})
    client = AllocatorClient(str(runtime.socket_path))
    alloc = as_user(client, "alice").allocate()
    eventually(
        lambda: as_user(client, "alice").get(alloc["id"])["state"] == "released",
        WAIT,
        "reservation expiry",
    )
    assert as_user(client, "alice").get(alloc["id"])["release_reason"] == "reservation_expired"
    assert as_user(client, "alice").usage()["holding"] == 0


def test_a_device_with_someone_elses_process_is_not_handed_out(allocator, client, sim_state):
    sim_state.set_device("0:0", pids=[1], activity=0.9)  # PID 1 belongs to root, not alice
    alice = as_user(client, "alice")
    status, answer = alice.call("POST", "/v1/allocations", {"profile": "3g.71gb", "queue": False})
    assert status == 503 and answer["error"] == "no_capacity"
    busy = [d for d in client.devices() if d["index"] == "0:0"]
    assert busy[0]["state"] == "busy" and busy[0]["pids"] == [1]
    sim_state.clear()
    assert alice.allocate(profile="3g.71gb")["devices"] == [busy[0]["device_uuid"]]


def test_a_client_that_disconnects_leaves_the_queue(allocator_factory):
    runtime = allocator_factory(policy={"gpu_wait": "30s"})
    client = AllocatorClient(str(runtime.socket_path))
    as_user(client, "alice").allocate(profile="3g.71gb")
    body = json.dumps({"profile": "3g.71gb", "wait": 30, "user": "bob"}).encode()
    raw = socket.socket(socket.AF_UNIX)
    raw.connect(str(runtime.socket_path))
    raw.sendall(
        b"POST /v1/allocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    eventually(lambda: len(runtime.allocator.queue) == 1, WAIT, "bob queued")
    raw.close()
    eventually(lambda: len(runtime.allocator.queue) == 0, WAIT, "bob leaving the queue")


def test_a_ticket_nobody_polls_leaves_the_queue(allocator_factory):
    runtime = allocator_factory(policy={"gpu_wait": "30s"}, ticket_grace=0.3)
    client = AllocatorClient(str(runtime.socket_path))
    as_user(client, "alice").allocate(profile="3g.71gb")
    status, answer = as_user(client, "bob").call("POST", "/v1/allocations", {"profile": "3g.71gb"})
    assert status == 202 and answer["position"] == 1
    eventually(lambda: len(runtime.allocator.queue) == 0, WAIT, "abandoned ticket dropped")
    status, _ = as_user(client, "bob").call("GET", f"/v1/tickets/{answer['ticket']}")
    assert status == 410


def _request_as(uid: int, socket_path: str, body: dict) -> dict:
    """Fork a child that drops to `uid` and asks the allocator; returns the answer."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: only raw syscalls, then _exit
        try:
            os.close(read_end)
            os.setgid(uid)
            os.setuid(uid)
            data = json.dumps(body).encode()
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(socket_path)
            sock.sendall(
                b"POST /v1/allocations HTTP/1.0\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(data)}\r\n\r\n".encode()
                + data
            )
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
            os.write(write_end, b"".join(chunks))
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        response = reader.read()
    os.waitpid(pid, 0)
    head, _, payload = response.partition(b"\r\n\r\n")
    return {"status": int(head.split()[1]), **json.loads(payload)}


def test_identity_comes_from_the_socket_not_the_body(allocator, client):
    require_root("switching to another uid")
    answer = _request_as(65534, str(allocator.socket_path), {"count": 1, "user": "alice"})
    assert answer["status"] == 201
    assert answer["allocation"]["user"] == "nobody"
    mine = as_user(client, "alice").usage()
    assert mine["holding"] == 0  # nothing was charged to alice


@pytest.mark.parametrize("forged", ["", "?user=alice"], ids=["plain", "naming-the-owner"])
def test_only_the_owner_or_root_may_release(allocator, client, forged):
    """Naming the owner in the query string makes no one the owner: only root may act for
    another user."""
    require_root("switching to another uid")
    alloc = as_user(client, "alice").allocate()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.setgid(65534)
            os.setuid(65534)
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(str(allocator.socket_path))
            sock.sendall(f"DELETE /v1/allocations/{alloc['id']}{forged} HTTP/1.0\r\n\r\n".encode())
            os.write(write_end, sock.recv(100))
        finally:
            os._exit(0)
    os.close(write_end)
    status_line = os.read(read_end, 100)
    os.waitpid(pid, 0)
    assert b" 403 " in status_line
    assert as_user(client, "alice").get(alloc["id"])["state"] == "reserved"


def test_tcp_needs_the_token(allocator_factory):
    from ds01.stack import free_port

    port = free_port()
    runtime = allocator_factory(listen=("127.0.0.1", port), token="s3cret")
    url = f"http://127.0.0.1:{port}"
    status, answer = AllocatorClient(url=url).call("GET", "/v1/usage")
    assert status == 401 and answer["error"] == "unauthenticated"
    admin = AllocatorClient(url=url, token="s3cret")
    alloc = admin.allocate(user="alice")
    assert alloc["user"] == "alice"
    assert runtime.allocator.live("alice")[0].id == alloc["id"]


def test_restart_keeps_reservations(allocator_factory):
    first = allocator_factory(name="r")
    alloc = as_user(AllocatorClient(str(first.socket_path)), "alice").allocate()
    first.stop()
    second = allocator_factory(name="r")
    again = as_user(AllocatorClient(str(second.socket_path)), "alice").get(alloc["id"])
    assert again["state"] == "reserved" and again["devices"] == alloc["devices"]
