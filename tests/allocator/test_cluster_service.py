"""Several allocators (one per node) on one PostgreSQL store, as services (frozen clock, sim
devices per node): cluster-wide quota and waits, node-local lifecycle, and a store outage."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import yaml

from allocator.client import AllocatorClient, Refused
from allocator.lifecycle import ContainerView
from allocator.model import BOUND, HELD, RESERVED, AllocationRequest, AllocatorError
from allocator.service import Allocator, NotFound, Settings
from allocator.store import StoreUnavailable
from allocator.store_postgres import PostgresAllocationStore
from ds01.clock import FrozenClock
from ds01.gpu.sim import SimBackend, topology_for_node
from ds01.policy import parse_policy
from tests.allocator.conftest import WAIT, as_user
from tests.harness.waiting import eventually

pytestmark = pytest.mark.integration

OUTAGE = float(os.environ.get("DS01_TEST_PG_OUTAGE", "3"))  # seconds PostgreSQL stays down
POLICY = {"gpu_wait": "3m", "reservation_ttl": "10m", "users": {"alice": "student"}}


def node_topology(folder: Path, node: str) -> Path:
    path = folder / f"topology-{node}.yaml"
    path.write_text(topology_for_node(node))
    return path


@pytest.fixture
def clock():
    return FrozenClock()


@pytest.fixture
def nodes(tmp_path, clock):
    """Factory: the allocator of node `name` on a store `dsn`; stores closed at teardown."""
    stores: list[PostgresAllocationStore] = []

    def start(name: str, dsn: str) -> Allocator:
        stores.append(PostgresAllocationStore(dsn, node=name))
        return Allocator(
            store=stores[-1],
            backend=SimBackend.from_files(
                node_topology(tmp_path, name), tmp_path / f"sim-{name}.json"
            ),
            policy=parse_policy(POLICY),
            clock=clock,
            settings=Settings(inventory_refresh=0, ticket_grace=3600),
        )

    yield start
    for store in stores:
        store.close()


def _running(alloc, container_id: str = "c" * 64) -> ContainerView:
    return ContainerView(
        container_id=container_id,
        name="train",
        allocation=alloc.id,
        user=alloc.user,
        running=True,
        gpu_devices=alloc.devices,
    )


def test_quota_counts_every_node_and_the_refusal_says_where(nodes, postgres_dsn):
    a, b, c = (nodes(n, postgres_dsn) for n in ("gpu-a", "gpu-b", "gpu-c"))
    on_a = a.submit(AllocationRequest("alice"))
    on_b = b.submit(AllocationRequest("alice"))
    assert on_a.node == "gpu-a" and on_b.node == "gpu-b"
    assert set(on_a.devices).isdisjoint(on_b.devices)  # each node has its own devices
    with pytest.raises(AllocatorError) as refused:
        c.submit(AllocationRequest("alice"))
    assert refused.value.denial.reason == "quota"
    assert "holds 2 of 2 GPUs (gpu-a: 1, gpu-b: 1)" in refused.value.denial.message
    usage = c.usage("alice")
    assert usage["holding"] == 2 and usage["holding_by_node"] == {"gpu-a": 1, "gpu-b": 1}
    assert usage["allocations"] == []  # this node's allocations: none
    a.release(on_a.id, user="alice")
    assert c.submit(AllocationRequest("alice")).node == "gpu-c"


def test_one_nodes_reconcile_tick_and_release_never_touch_another_nodes(nodes, postgres_dsn, clock):
    a, b = nodes("gpu-a", postgres_dsn), nodes("gpu-b", postgres_dsn)
    bound = a.submit(AllocationRequest("alice"))
    a.reconcile([_running(bound)])
    reserved = a.submit(AllocationRequest("alice"))
    b.reconcile([])  # node B's Docker has no container of node A's allocation
    clock.advance(601)  # past the reservation TTL
    b.tick()
    assert a.get(bound.id, user="alice").state == BOUND
    assert a.get(reserved.id, user="alice").state == RESERVED
    with pytest.raises(NotFound):
        b.release(bound.id, user="alice")
    assert [row["allocation"] for row in b.devices() if row["allocation"]] == []
    a.tick()  # node A's own tick expires node A's reservation
    assert a.get(reserved.id, user="alice").release_reason == "reservation_expired"
    assert a.get(bound.id, user="alice").state == BOUND


def test_a_wait_on_one_node_counts_against_the_quota_on_another(nodes, postgres_dsn):
    a, b = nodes("gpu-a", postgres_dsn), nodes("gpu-b", postgres_dsn)
    a.submit(AllocationRequest("bob", count=2, profile="1g.18gb"))  # node A's 1g devices
    waiter = a.submit(AllocationRequest("alice", count=2, profile="1g.18gb"))
    assert not waiter.resolved
    with pytest.raises(AllocatorError) as refused:
        b.submit(AllocationRequest("alice"))
    assert "waits for 2 more" in refused.value.denial.message
    a.cancel(waiter.ticket, user="alice")
    a.tick()  # publishes node A's queue (now empty) in its next transaction
    assert b.submit(AllocationRequest("alice")).node == "gpu-b"


def test_postgres_down_refuses_grants_releases_nothing_and_recovers(nodes, postgres_factory):
    server = postgres_factory()
    a = nodes("gpu-a", server.create_database("down"))
    bound = a.submit(AllocationRequest("alice"))
    a.reconcile([_running(bound)])
    server.stop()
    with pytest.raises(StoreUnavailable, match="PostgreSQL at .*retry"):
        a.submit(AllocationRequest("alice"))
    for pass_ in (lambda: a.reconcile([]), a.tick):  # nothing can be released meanwhile
        with pytest.raises(StoreUnavailable):
            pass_()
    threading.Event().wait(OUTAGE)  # the outage (DS01_TEST_PG_OUTAGE seconds)
    server.start()
    assert a.get(bound.id, user="alice").state == BOUND  # same allocator, new connection
    assert a.submit(AllocationRequest("alice")).state == RESERVED


def test_postgres_down_is_a_503_naming_the_store(allocator_factory, postgres_factory):
    server = postgres_factory()
    dsn = server.create_database("api")
    runtime = allocator_factory(
        policy={"cluster": {"store": "postgres", "postgres_dsn": dsn}, "services": {"node": "n1"}}
    )
    client = as_user(AllocatorClient(str(runtime.socket_path)), "alice")
    first = client.allocate(count=1)
    assert first["node"] == "n1"
    server.stop()
    with pytest.raises(Refused) as refused:
        client.allocate(count=1)
    assert refused.value.status == 503
    assert "allocation store (PostgreSQL at 127.0.0.1" in refused.value.message
    assert "retry" in refused.value.message
    server.start()
    assert client.allocate(count=1)["node"] == "n1"
    assert {a["id"] for a in client.allocations()} >= {first["id"]}


def test_outage_under_docker_stops_nothing_and_catches_up_when_back(
    allocator_factory, postgres_factory, docker_client, containers
):
    """A container stopped while PostgreSQL is down is seen once it is back (the watcher
    reconciles again); the running one keeps its bound allocation throughout."""
    server = postgres_factory()
    runtime = allocator_factory(
        policy={
            "cluster": {"store": "postgres", "postgres_dsn": server.create_database("dock")},
            "services": {"node": "n1"},
            "gpu_hold_after_stop": "1h",
        },
        docker=docker_client,
    )
    client = as_user(AllocatorClient(str(runtime.socket_path)), "alice")
    allocs = [client.allocate(count=1) for _ in range(2)]
    running, stopping = (
        containers(
            gpus=alloc["devices"], labels={"ds01.user": "alice", "ds01.allocation": alloc["id"]}
        )
        for alloc in allocs
    )

    def states() -> dict[str, str]:
        return {a.id: a.state for a in runtime.allocator.live()}

    eventually(lambda: set(states().values()) == {BOUND}, WAIT, "both allocations bound")
    server.stop()
    stopping.stop(timeout=0)  # its die event arrives while the store is down
    with pytest.raises(Refused) as refused:
        client.allocate(count=1)
    assert refused.value.status == 503
    threading.Event().wait(OUTAGE)
    server.start()
    eventually(
        lambda: states() == {allocs[0]["id"]: BOUND, allocs[1]["id"]: HELD},
        WAIT + OUTAGE,
        "the stop seen after the outage, the running container still bound",
    )
    running.reload()
    assert running.status == "running"
    errors = {
        source: runtime.registry.get_sample_value("ds01_allocator_errors_total", {"source": source})
        for source in ("store", "docker")
    }
    assert errors["store"] >= 1 and errors["docker"] == 0  # the store failed, not Docker


def test_adoption_counts_the_owners_devices_on_other_nodes(nodes, postgres_dsn):
    a, b = nodes("gpu-a", postgres_dsn), nodes("gpu-b", postgres_dsn)
    a.submit(AllocationRequest("alice", count=2))  # alice's quota, on node A
    device = b.inventory.current().devices[0].device_uuid
    bypass = ContainerView(
        container_id="d" * 64,
        name="rogue",
        allocation="",
        user="alice",
        running=True,
        gpu_devices=(device,),
        started_at=1.0,
    )
    b.reconcile([bypass])
    assert b.live() == []  # not adopted: alice holds 2 of 2 on node A
    (row,) = [r for r in b.devices() if r["device_uuid"] == device]
    assert row["state"] == "busy"  # still never granted while the container runs


def test_the_dsn_file_is_read_and_checked_like_a_token(tmp_path, postgres_dsn, capsys):
    from allocator import cli
    from allocator.runtime import open_store
    from ds01.tokenfile import TokenFileError
    from ds01.webauth import write_private

    dsn_file = write_private(tmp_path / "pg.dsn", postgres_dsn + "\n")
    section = {"store": "postgres", "postgres_dsn_file": str(dsn_file)}
    policy = parse_policy({"cluster": section, "services": {"node": "n1"}})
    store = open_store(policy, tmp_path / "unused.sqlite")
    try:
        with store.transaction() as tx:
            assert tx.live() == [] and store.node == "n1"
    finally:
        store.close()
    assert not (tmp_path / "unused.sqlite").exists()
    dsn_file.chmod(0o644)  # the password readable by every user
    with pytest.raises(TokenFileError):
        open_store(policy, tmp_path / "unused.sqlite")
    policy_file = tmp_path / "ds01.yaml"
    policy_file.write_text(yaml.safe_dump({"cluster": section, "services": {"node": "n1"}}))
    argv = ["--policy", str(policy_file), "--state-dir", str(tmp_path), "--gpu-backend", "sim"]
    with pytest.raises(SystemExit) as exited:
        cli.main([*argv, "--socket", str(tmp_path / "a.sock")])
    assert exited.value.code == 2
    assert "cluster.postgres_dsn_file: refusing to start" in capsys.readouterr().err


def test_an_allocator_started_while_postgres_is_down_serves_once_it_is_up(
    allocator_factory, postgres_factory
):
    server = postgres_factory()
    dsn = server.create_database("late")
    server.stop()
    runtime = allocator_factory(
        policy={"cluster": {"store": "postgres", "postgres_dsn": dsn}, "services": {"node": "n1"}}
    )
    client = as_user(AllocatorClient(str(runtime.socket_path)), "alice")
    with pytest.raises(Refused) as refused:
        client.allocate(count=1)
    assert refused.value.status == 503 and "PostgreSQL" in refused.value.message
    server.start()
    assert client.allocate(count=1)["node"] == "n1"  # connected and migrated on first use
