import contextlib
import sqlite3
from dataclasses import replace

import pytest

from allocator.lifecycle import released
from allocator.model import BOUND, RESERVED, Allocation
from allocator.store import StoreConflict
from allocator.store_sqlite import CHECKPOINT_DECISIONS, SqliteAllocationStore, SqliteTx


@contextlib.contextmanager
def _fresh(path):
    """One transaction of a store opened for it and closed after (as a restart would)."""
    store = SqliteAllocationStore(path)
    try:
        with store.transaction() as tx:
            yield tx
    finally:
        store.close()


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

    store.fold()  # the WAL as a fold leaves it
    private = ("a.sqlite-wal", "a.sqlite-shm", "a.sqlite-decisions.1", "a.sqlite.lock")
    for file in (path, *(tmp_path / name for name in private)):
        assert file.stat().st_mode & 0o777 == 0o600, file


def _released(alloc_id, device, *, at):
    return released(_alloc(alloc_id, [device]), at=at, reason="released")


def test_prune_forgets_only_allocations_released_before_the_cutoff(tmp_path):
    store = SqliteAllocationStore(tmp_path / "a.sqlite")
    with store.transaction() as tx:
        tx.insert(_released("old", "MIG-1", at=100.0))
        tx.insert(_released("recent", "MIG-1", at=300.0))
        tx.insert(_alloc("live", ["MIG-1"], state=BOUND))
        assert tx.prune(200.0) == 1
    with store.transaction() as tx:
        assert {a.id for a in tx.history()} == {"recent", "live"}
        assert tx.get("old") is None
    devices = sqlite3.connect(tmp_path / "a.sqlite").execute(
        "SELECT allocation_id FROM allocation_devices ORDER BY allocation_id"
    )
    assert [row[0] for row in devices] == ["live", "recent"]  # device rows went with it


def _live_steps(path) -> tuple[list, int]:
    """live() on its own connection, counting SQLite VM steps (deterministic, not timed)."""
    conn = sqlite3.connect(path)
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0

    conn.set_progress_handler(count, 1)
    found = SqliteTx(conn).live()
    conn.close()
    return found, steps[0]


def test_live_costs_the_same_whatever_the_history(tmp_path):
    """live() reads through the state index: 5,000 released rows add no work to it."""
    paths = []
    for name, history in (("empty", 0), ("full", 5000)):
        path = tmp_path / f"{name}.sqlite"
        store = SqliteAllocationStore(path)
        with store.transaction() as tx:
            for n in range(history):
                tx.insert(_released(f"old{n}", f"MIG-{n % 7}", at=float(n)))
            tx.insert(_alloc("live1", ["MIG-1"], state=BOUND))
            tx.insert(_alloc("live2", ["MIG-2"]))
        store.close()
        paths.append(path)
    (empty, empty_steps), (full, full_steps) = (_live_steps(p) for p in paths)
    assert [a.id for a in empty] == [a.id for a in full] == ["live1", "live2"]
    assert full_steps < 2 * empty_steps, (empty_steps, full_steps)


def test_a_rolled_back_transaction_leaves_live_as_it_was(tmp_path):
    """live() answers from memory: it must follow commits only, exactly as the table does."""
    path = tmp_path / "a.sqlite"
    store = SqliteAllocationStore(path)
    with store.transaction() as tx:
        tx.insert(_alloc("a1", ["MIG-1"]))
    with pytest.raises(RuntimeError), store.transaction() as tx:
        tx.insert(_alloc("a2", ["MIG-2"]))
        tx.update(released(tx.get("a1"), at=2.0, reason="released"))
        raise RuntimeError("a decision that failed half-way")
    with store.transaction() as tx:
        assert [a.id for a in tx.live()] == ["a1"]
        assert tx.get("a2") is None
        tx.update(released(tx.get("a1"), at=3.0, reason="released"))
        tx.insert(_alloc("a3", ["MIG-1"], state=BOUND))
        cached = tx.live()
    store.close()
    with SqliteAllocationStore(path).transaction() as tx:
        assert tx.live() == cached == [_alloc("a3", ["MIG-1"], state=BOUND)]


def test_vanished_marks_and_release_are_stored_together(tmp_path):
    """Read back through a fresh store each time (no in-memory copy): what update() wrote."""
    path = tmp_path / "a.sqlite"
    with _fresh(path) as tx:
        tx.insert(_alloc("a1", ["MIG-1", "MIG-2"]))
        tx.update(replace(tx.get("a1"), vanished=("MIG-2",)))
    with _fresh(path) as tx:
        [alloc] = tx.live()
        assert (alloc.id, alloc.vanished) == ("a1", ("MIG-2",))
        tx.update(released(alloc, at=2.0, reason="released"))
    with _fresh(path) as tx:
        assert tx.live() == []
        assert tx.get("a1").vanished == ("MIG-2",)
        tx.insert(_alloc("a2", ["MIG-1", "MIG-2"], user="bob"))  # released: free again
        tx.update(replace(tx.get("a2"), vanished=("MIG-1",)))
        tx.update(replace(tx.get("a2"), vanished=()))
    with _fresh(path) as tx:
        assert [(a.id, a.vanished) for a in tx.live()] == [("a2", ())]


def _wal_frames(path) -> int:
    return path.with_name(path.name + "-wal").stat().st_size // (4096 + 24)


def _grow(store: SqliteAllocationStore, count: int) -> None:
    for n in range(count):
        with store.transaction() as tx:
            tx.insert(_alloc(f"grow{n:04d}", [f"MIG-{n}"], user=f"user{n}"))


def test_decisions_leave_the_fold_and_the_copy_into_the_database_to_checkpoint(tmp_path):
    """A decision only appends to the log (no SQLite, no copy and fsyncs under the decision
    lock); the ticker's checkpoint() folds the log and, once CHECKPOINT_DECISIONS are
    folded, copies the WAL into the database file."""
    path = tmp_path / "a.sqlite"
    store = SqliteAllocationStore(path)
    before, frames = path.stat().st_size, _wal_frames(path)  # the schema's
    _grow(store, CHECKPOINT_DECISIONS)
    assert (path.stat().st_size, _wal_frames(path)) == (before, frames)
    store.checkpoint()
    assert path.stat().st_size > before
    store.close()
    with SqliteAllocationStore(path).transaction() as tx:
        assert len(tx.live()) == CHECKPOINT_DECISIONS


def test_without_checkpoints_the_writer_still_bounds_the_log_and_the_wal(tmp_path, monkeypatch):
    """A ticker that stopped must not let the decision log or the WAL fill the disk: past the
    fallback sizes the writer folds the log and checkpoints by itself."""
    monkeypatch.setattr("allocator.store_sqlite.FALLBACK_FOLD_DECISIONS", 20)
    monkeypatch.setattr("allocator.store_sqlite.FALLBACK_CHECKPOINT_PAGES", 50)
    path = tmp_path / "a.sqlite"
    store = SqliteAllocationStore(path)
    before = path.stat().st_size
    _grow(store, 300)
    assert path.stat().st_size > before
    wal = path.with_name(path.name + "-wal").stat().st_size
    assert wal < 300 * 4096  # reset and reused, not one frame per commit ever made
    [segment] = tmp_path.glob("a.sqlite-decisions.*")
    assert len(segment.read_bytes().splitlines()) < 20  # emptied at each fold


def test_a_few_commits_wait_for_the_checkpoint_interval(tmp_path, monkeypatch):
    """Two fsyncs per tick would be paid for every trickle of commits: a few commits are
    copied only once CHECKPOINT_EVERY has passed."""
    monkeypatch.setattr("allocator.store_sqlite.CHECKPOINT_EVERY", 3600.0)
    path = tmp_path / "a.sqlite"
    store = SqliteAllocationStore(path)
    before = path.stat().st_size
    _grow(store, 20)
    store.checkpoint()
    assert path.stat().st_size == before
    monkeypatch.setattr("allocator.store_sqlite.CHECKPOINT_EVERY", 0.0)
    store.checkpoint()
    assert path.stat().st_size > before
