"""The cluster store on a real PostgreSQL: schema constraint, migrations, node scope, races,
and an outage (the server stopped and started again under a running store)."""

from __future__ import annotations

import os
import threading

import psycopg
import pytest

from allocator.lifecycle import released
from allocator.model import BOUND, RESERVED, Allocation
from allocator.store import StoreConflict, StoreRetry, StoreUnavailable, WaitRecord
from allocator.store_postgres import PostgresAllocationStore, PostgresTx
from allocator.store_schema import MIGRATIONS, Migration, SchemaTooNew, apply_migrations

pytestmark = pytest.mark.integration

OUTAGE = float(os.environ.get("DS01_TEST_PG_OUTAGE", "3"))  # seconds PostgreSQL stays down


def _alloc(alloc_id, devices, user="alice", state=RESERVED, node=""):
    return Allocation(alloc_id, user, "student", tuple(devices), state, created_at=1.0, node=node)


@pytest.fixture
def stores(postgres_dsn):
    """Factory: a store for node `name` on the test's database; closed at teardown."""
    made = []

    def open_store(name: str) -> PostgresAllocationStore:
        made.append(PostgresAllocationStore(postgres_dsn, node=name))
        return made[-1]

    yield open_store
    for store in made:
        store.close()


def test_insert_and_read_back_with_the_node(stores):
    store = stores("gpu-a")
    with store.transaction() as tx:
        tx.insert(_alloc("a1", ["MIG-1", "MIG-2"]))
    with store.transaction() as tx:
        (alloc,) = tx.live()
        assert alloc.devices == ("MIG-1", "MIG-2") and alloc.node == "gpu-a"
        assert tx.get("a1").user == "alice"


def test_one_live_holder_per_device_across_nodes(stores):
    a, b = stores("gpu-a"), stores("gpu-b")
    with a.transaction() as tx:
        tx.insert(_alloc("a1", ["GPU-same"]))
    with pytest.raises(StoreConflict), b.transaction() as tx:
        tx.insert(_alloc("b1", ["GPU-same"], user="bob"))
    with a.transaction() as tx:
        tx.update(released(tx.get("a1"), at=2.0, reason="released"))
    with b.transaction() as tx:  # released: the device may be granted again
        tx.insert(_alloc("b1", ["GPU-same"], user="bob"))


def test_the_schema_itself_refuses_a_second_live_holder(postgres_dsn, stores):
    with stores("gpu-a").transaction() as tx:
        tx.insert(_alloc("a1", ["GPU-x"]))
    with psycopg.connect(postgres_dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO allocations (id, node, user_name, grp, state, created_at)"
            " VALUES ('raw', 'gpu-b', 'bob', 'student', 'reserved', 1)"
        )
        with pytest.raises(psycopg.errors.UniqueViolation, match="one_live_holder_per_device"):
            cur.execute(
                "INSERT INTO allocation_devices (allocation_id, device_uuid, position, live)"
                " VALUES ('raw', 'GPU-x', 0, true)"
            )


def test_each_node_sees_only_its_own_allocations_but_quota_counts_all(stores):
    a, b = stores("gpu-a"), stores("gpu-b")
    with a.transaction() as tx:
        tx.insert(_alloc("a1", ["MIG-a1"]))
    with b.transaction() as tx:
        tx.insert(_alloc("b1", ["MIG-b1", "MIG-b2"], state=BOUND))
        assert [x.id for x in tx.live()] == ["b1"]
        assert tx.get("a1") is None  # another node's: never reconciled or released here
        assert tx.holdings("alice") == {"gpu-a": 1, "gpu-b": 2}
        assert tx.holdings("bob") == {}
        tx.update(released(tx.get("b1"), at=2.0, reason="released"))
    with a.transaction() as tx:
        assert tx.holdings("alice") == {"gpu-a": 1}
        assert [x.id for x in tx.history()] == ["a1"]


def test_published_waits_count_on_other_nodes_until_their_deadline(stores):
    a, b = stores("gpu-a"), stores("gpu-b")
    with a.transaction() as tx:
        tx.publish_waits([WaitRecord("t1", "alice", 2, deadline=100.0)])
    with b.transaction() as tx:
        assert tx.waiting_elsewhere("alice", now=50.0) == {"gpu-a": 2}
        assert tx.waiting_elsewhere("alice", now=100.0) == {}  # expired (a node that died)
    with a.transaction() as tx:
        assert tx.waiting_elsewhere("alice", now=50.0) == {}  # its own are in its queue
        tx.publish_waits([])
    with b.transaction() as tx:
        assert tx.waiting_elsewhere("alice", now=50.0) == {}


def test_migrations_apply_once_even_when_allocators_start_together(postgres_dsn):
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def open_one() -> None:
        store = PostgresAllocationStore(postgres_dsn, node=f"n{threading.get_ident()}")
        start.wait()
        try:
            with store.transaction() as tx:
                tx.live()
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)
        finally:
            store.close()

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    with psycopg.connect(postgres_dsn) as conn:
        versions = [r[0] for r in conn.execute("SELECT version FROM schema_migrations")]
        assert sorted(versions) == [m.version for m in MIGRATIONS]
        assert apply_migrations(conn) == []  # nothing left to do


def test_a_newer_schema_is_refused_with_the_versions(postgres_dsn):
    newer = (*MIGRATIONS, Migration(99, "from the future", "SELECT 1"))
    with psycopg.connect(postgres_dsn) as conn:
        apply_migrations(conn, newer)
    with psycopg.connect(postgres_dsn) as conn, pytest.raises(SchemaTooNew, match=r"\[99\]"):
        apply_migrations(conn)
    store = PostgresAllocationStore(postgres_dsn, node="gpu-a")
    with pytest.raises(StoreUnavailable, match="upgrade ds01"), store.transaction():
        pass


def test_two_nodes_granting_to_one_user_at_once_cannot_both_commit(postgres_dsn, stores):
    """SERIALIZABLE is the guarantee, writer lock or not: a transaction outside the store's
    turn-taking (raw, as a bug or an admin's script would be) and a store transaction both
    read alice's holdings on every node and both insert; the second to commit is rolled back
    and the store says so with StoreRetry (the service replays it)."""
    b = stores("gpu-b")
    with b.transaction() as tx:
        tx.live()  # migrated before the race
    with psycopg.connect(postgres_dsn) as raw:
        raw.isolation_level = psycopg.IsolationLevel.SERIALIZABLE
        outside = PostgresTx(raw, "gpu-a")
        assert outside.holdings("alice") == {}
        with pytest.raises(StoreRetry), b.transaction() as tx:
            assert tx.holdings("alice") == {}  # quota 1: room for one
            outside.insert(_alloc("x-a", ["MIG-a"]))
            raw.commit()
            tx.insert(_alloc("x-b", ["MIG-b"]))
    with b.transaction() as tx:
        assert tx.holdings("alice") == {"gpu-a": 1}  # only the first commit happened


def test_an_outage_fails_clearly_and_the_store_reconnects_by_itself(postgres_factory):
    server = postgres_factory()
    store = PostgresAllocationStore(server.create_database("outage"), node="gpu-a")
    try:
        with store.transaction() as tx:
            tx.insert(_alloc("a1", ["MIG-1"], state=BOUND))
        server.stop()
        with pytest.raises(StoreUnavailable) as caught, store.transaction() as tx:
            tx.insert(_alloc("a2", ["MIG-2"]))
        message = str(caught.value)
        assert f"PostgreSQL at 127.0.0.1:{server.port}/outage" in message
        assert "retry" in message and server.password not in message
        stopped = threading.Event()
        stopped.wait(OUTAGE)  # the outage lasts this long (DS01_TEST_PG_OUTAGE)
        with pytest.raises(StoreUnavailable):
            with store.transaction() as tx:
                tx.live()
        server.start()
        with store.transaction() as tx:  # a new connection, no restart of the store
            assert [(x.id, x.state) for x in tx.live()] == [("a1", BOUND)]
            tx.insert(_alloc("a2", ["MIG-2"]))
    finally:
        store.close()


def test_a_dsn_without_a_node_is_refused(postgres_dsn):
    with pytest.raises(ValueError, match="node"):
        PostgresAllocationStore(postgres_dsn, node="")


def test_a_peer_stuck_in_its_turn_is_a_503_then_loses_the_lock(postgres_dsn):
    """A session that took the writer lock and went silent inside its transaction (a node cut
    off mid-turn): others answer 503 after lock_timeout, and the server ends the silent session
    (idle_in_transaction_session_timeout), so the turns resume without anyone's help."""
    stuck_store = PostgresAllocationStore(postgres_dsn, node="gpu-a", lock_timeout=2.0)
    waiting = PostgresAllocationStore(postgres_dsn, node="gpu-b", lock_timeout=0.5)
    try:
        with pytest.raises(StoreUnavailable, match="idle-in-transaction timeout"):
            with stuck_store.transaction() as tx:
                tx.live()  # holds the lock, in a transaction, and then says nothing
                with pytest.raises(StoreUnavailable, match="lock timeout"):
                    with waiting.transaction():
                        pass
                threading.Event().wait(2.5)  # silent past its idle-in-transaction timeout
        with waiting.transaction() as tx:  # the server ended the stuck session and its lock
            assert tx.live() == []
        with stuck_store.transaction() as tx:  # and the stuck node reconnects by itself
            assert tx.live() == []
    finally:
        stuck_store.close()
        waiting.close()
