import sqlite3

import pytest

from allocator.lifecycle import released
from allocator.model import BOUND, RESERVED, Allocation
from allocator.store import SqliteAllocationStore, StoreConflict


def _alloc(alloc_id, devices, user="alice", state=RESERVED):
    return Allocation(alloc_id, user, "student", tuple(devices), state, created_at=1.0)


def test_insert_and_read_back(tmp_path):
    store = SqliteAllocationStore(tmp_path / "a.sqlite")
    with store.transaction() as tx:
        tx.insert(_alloc("a1", ["MIG-1", "MIG-2"]))
    with store.transaction() as tx:
        assert [a.devices for a in tx.live()] == [("MIG-1", "MIG-2")]
        assert tx.get("a1").user == "alice"


def test_a_device_cannot_be_in_two_live_allocations(tmp_path):
    store = SqliteAllocationStore(tmp_path / "a.sqlite")
    with store.transaction() as tx:
        tx.insert(_alloc("a1", ["MIG-1"]))
    with pytest.raises(StoreConflict), store.transaction() as tx:
        tx.insert(_alloc("a2", ["MIG-1"], user="bob"))
    with store.transaction() as tx:
        assert [a.id for a in tx.live()] == ["a1"]  # the failed transaction left nothing


def test_released_devices_can_be_granted_again(tmp_path):
    store = SqliteAllocationStore(tmp_path / "a.sqlite")
    with store.transaction() as tx:
        tx.insert(_alloc("a1", ["MIG-1"]))
        tx.update(released(tx.get("a1"), at=2.0, reason="released"))
        tx.insert(_alloc("a2", ["MIG-1"], user="bob"))
        assert [a.id for a in tx.live()] == ["a2"]
        assert {a.id for a in tx.history()} == {"a1", "a2"}


def test_state_survives_reopening_and_uses_wal(tmp_path):
    path = tmp_path / "a.sqlite"
    store = SqliteAllocationStore(path)
    with store.transaction() as tx:
        tx.insert(_alloc("a1", ["MIG-1"], state=BOUND))
    store.close()
    again = SqliteAllocationStore(path)
    with again.transaction() as tx:
        assert tx.get("a1").state == BOUND
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_the_database_and_its_wal_are_private(tmp_path):
    path = tmp_path / "a.sqlite"
    path.touch()
    path.chmod(0o644)  # an older database, made under a 022 umask
    store = SqliteAllocationStore(path)
    with store.transaction() as tx:
        tx.insert(_alloc("a1", ["MIG-1"]))

    for file in (path, tmp_path / "a.sqlite-wal", tmp_path / "a.sqlite-shm"):
        assert file.stat().st_mode & 0o777 == 0o600, file
