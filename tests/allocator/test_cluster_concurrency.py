"""The 200-simultaneous-requests test across 3 allocator processes (3 nodes, distinct devices)
sharing one PostgreSQL: no device in two live allocations, no user over the cluster quota.

Checked in the database: device spans on each node's clock (a device belongs to one node, whose
allocator orders its grants), consistent snapshots taken throughout the bursts (a user's live
devices on every node), and the final state.
"""

from __future__ import annotations

import threading
from collections import defaultdict

import psycopg
import pytest
import yaml

from ds01.gpu.sim import topology_devices, topology_for_node
from tests.allocator.conftest import write_topology
from tests.allocator.test_concurrency import QUOTA, USERS, burst
from tests.harness.allocators import start_allocator_node

pytestmark = pytest.mark.integration

NODES = ("gpu-a", "gpu-b", "gpu-c")


@pytest.fixture
def cluster(short_dir, postgres_dsn):
    topology = write_topology(short_dir, gpus=2, mig_per_gpu=4)  # 8 devices per node
    policy = {
        "gpu_wait": "1s",
        "gpu_hold_after_stop": "2s",
        "reservation_ttl": "60s",
        "users": {u: "student" for u in USERS},
    }
    started = []
    try:
        for node in NODES:
            started.append(
                start_allocator_node(
                    short_dir / node, node, topology=topology, policy=policy, dsn=postgres_dsn
                )
            )
        yield started, topology
    finally:
        for node in started:
            node.stop()


class SnapshotWatch:
    """Consistent snapshots of the live state while the bursts run; records every breach."""

    def __init__(self, dsn: str) -> None:
        self.dsn, self.snapshots, self.breaches = dsn, 0, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> SnapshotWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self._stop.is_set():
                with conn.transaction():
                    conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    self.breaches += live_breaches(conn)
                self.snapshots += 1
                self._stop.wait(0.005)


def live_breaches(conn: psycopg.Connection) -> list[str]:
    rows = conn.execute(
        "SELECT a.user_name, d.device_uuid FROM allocations a JOIN allocation_devices d"
        " ON d.allocation_id = a.id WHERE a.state <> 'released'"
    ).fetchall()
    per_user: dict[str, int] = defaultdict(int)
    for user, _device in rows:
        per_user[user] += 1
    devices = [device for _user, device in rows]
    found = [f"{u} holds {n} devices" for u, n in per_user.items() if n > QUOTA]
    if len(devices) != len(set(devices)):
        found.append("a device is in two live allocations")
    return found


def _device_spans_never_overlap(conn: psycopg.Connection) -> None:
    rows = conn.execute(
        "SELECT a.id, d.device_uuid, a.created_at, COALESCE(a.released_at, 1e18)"
        " FROM allocations a JOIN allocation_devices d ON d.allocation_id = a.id"
    ).fetchall()
    by_device = defaultdict(list)
    for alloc_id, device, start, end in rows:
        by_device[device].append((start, end, alloc_id))
    for device, spans in by_device.items():
        spans.sort()
        for (_, end, first), (start, _, second) in zip(spans, spans[1:], strict=False):
            assert start >= end, f"{device} in {first} and {second} at once"


def test_200_simultaneous_requests_across_3_allocators_on_postgres(cluster, postgres_dsn):
    nodes, topology = cluster
    clients = [node.client for node in nodes]
    with SnapshotWatch(postgres_dsn) as watch:
        churn = burst(clients, release=True, seed=1)
        held = burst(clients, release=False, seed=2)
    granted = [r for r in churn if r[2][0] == "granted"]
    assert len(granted) > 24  # devices were handed out again after releases
    assert {r[2][1] for r in churn + held if r[2][0] == "refused"} <= {"quota", "timeout"}
    kept = [r[2][1] for r in held if r[2][0] == "granted"]
    assert 1 <= len(kept) <= 24
    assert watch.snapshots > 10 and watch.breaches == []

    with psycopg.connect(postgres_dsn) as conn:
        _device_spans_never_overlap(conn)
        assert live_breaches(conn) == []
        live = conn.execute(
            "SELECT a.id, a.node, d.device_uuid FROM allocations a JOIN allocation_devices d"
            " ON d.allocation_id = a.id WHERE a.state <> 'released'"
        ).fetchall()
        nodes_used = conn.execute("SELECT DISTINCT node FROM allocations").fetchall()
    assert {n for (n,) in nodes_used} == set(NODES)  # every allocator granted
    own = {
        node: {
            d.device_uuid
            for d in topology_devices(yaml.safe_load(topology_for_node(node, topology)))
        }
        for node in NODES
    }
    assert all(device in own[node] for _id, node, device in live)  # a node grants its own
    assert len(live) == sum(len(a["devices"]) for a in kept)
