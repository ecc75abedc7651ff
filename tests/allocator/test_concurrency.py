"""200 simultaneous requests from 20 users against 8 devices: no double grant, no user over quota.

Checked on the SQLite history (every grant and release, with times) and on Docker (containers
created for the allocations that are left).
"""

from __future__ import annotations

import random
import sqlite3
import threading
from collections import defaultdict

import pytest

from allocator.client import AllocatorClient, Refused
from tests.allocator.conftest import as_user, write_topology
from tests.harness.containers import remove_container

USERS = [f"user{i:02d}" for i in range(20)]
QUOTA = 2


def burst(clients: list[AllocatorClient], *, release: bool, seed: int) -> list:
    """200 requests from 20 users released at once, spread over `clients` (one per allocator):
    (user, count, ("granted", allocation) | ("refused", reason)) each."""
    rng = random.Random(seed)
    plan = [(USERS[i % 20], rng.choice((1, 1, 2)), clients[i % len(clients)]) for i in range(200)]
    start = threading.Barrier(len(plan))
    results: list = []
    lock = threading.Lock()

    def one(user: str, count: int, client: AllocatorClient) -> None:
        me = as_user(client, user)
        start.wait()
        try:
            alloc = me.allocate(count=count, poll=0.5)
        except Refused as exc:
            outcome = ("refused", exc.reason)
        else:
            outcome = ("granted", alloc)
            if release:
                me.release(alloc["id"])
        with lock:
            results.append((user, count, outcome))

    threads = [threading.Thread(target=one, args=item) for item in plan]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(results) == 200
    return results


def _history(db_path) -> list[tuple]:
    conn = sqlite3.connect(db_path)
    rows = conn.execute(
        "SELECT a.id, a.user, d.device_uuid, a.created_at, COALESCE(a.released_at, 1e18)"
        " FROM allocations a JOIN allocation_devices d ON d.allocation_id = a.id"
    ).fetchall()
    conn.close()
    return rows


def _assert_never_shared_never_over_quota(rows: list[tuple]) -> None:
    by_device = defaultdict(list)
    for alloc_id, _user, device, start, end in rows:
        by_device[device].append((start, end, alloc_id))
    for device, spans in by_device.items():
        spans.sort()
        for (_, end, first), (start, _, second) in zip(spans, spans[1:], strict=False):
            assert start >= end, f"{device} in {first} and {second} at once"
    events = defaultdict(list)  # user -> (time, +1/-1 per device)
    for _alloc_id, user, _device, start, end in rows:
        events[user] += [(start, 1), (end, -1)]
    for user, changes in events.items():
        held = 0
        for _, delta in sorted(changes, key=lambda c: (c[0], c[1])):  # releases first
            held += delta
            assert held <= QUOTA, f"{user} held {held} devices"


@pytest.mark.integration
def test_200_simultaneous_requests_20_users_8_devices(
    allocator_factory, short_dir, docker_client, busybox_image
):
    topology = write_topology(short_dir, gpus=2, mig_per_gpu=4)
    users = {u: "student" for u in USERS}
    runtime = allocator_factory(
        policy={"gpu_wait": "1s", "users": users}, topology=topology, threads=64
    )
    client = AllocatorClient(str(runtime.socket_path))
    churn = burst([client], release=True, seed=1)
    granted = [r for r in churn if r[2][0] == "granted"]
    assert len(granted) > 8  # devices were handed out again after releases
    # A granted request must never look cancelled to its client (that would orphan devices).
    assert {r[2][1] for r in churn if r[2][0] == "refused"} <= {"quota", "timeout"}
    held = burst([client], release=False, seed=2)
    kept = [r[2][1] for r in held if r[2][0] == "granted"]
    assert 1 <= len(kept) <= 8
    reasons = {r[2][1] for r in held if r[2][0] == "refused"}
    assert reasons <= {"quota", "timeout"}

    runtime.store.fold()  # the decision log into the database this test reads
    rows = _history(runtime.store.path)
    _assert_never_shared_never_over_quota(rows)
    live_devices = [d for a in runtime.allocator.live() for d in a.devices]
    assert len(live_devices) == len(set(live_devices)) == sum(len(a["devices"]) for a in kept)

    from docker.types import DeviceRequest

    made = []
    try:
        for alloc in kept:
            made.append(
                docker_client.containers.create(
                    busybox_image,
                    ["sleep", "60"],
                    labels={"ds01.user": alloc["user"], "ds01.allocation": alloc["id"]},
                    device_requests=[
                        DeviceRequest(device_ids=alloc["devices"], capabilities=[["gpu"]])
                    ],
                    network_mode="none",
                )
            )
        seen: list[str] = []
        per_user: dict[str, int] = defaultdict(int)
        for container in made:
            attrs = docker_client.api.inspect_container(container.id)
            ids = attrs["HostConfig"]["DeviceRequests"][0]["DeviceIDs"]
            seen += ids
            per_user[attrs["Config"]["Labels"]["ds01.user"]] += len(ids)
        assert len(seen) == len(set(seen)) <= 8
        assert max(per_user.values()) <= QUOTA
    finally:
        for container in made:
            remove_container(container)
