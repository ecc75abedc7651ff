"""The decision log: a decision answered is a decision kept, through a SIGKILL, a fold cut
short by a crash, a torn line and a full disk; reads beyond the live allocations see it."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from allocator import cli
from allocator.decision_log import (
    DecisionLogCorrupt,
    DecisionLogUnwritable,
    LoggedDecision,
    StateInUse,
    coalesce,
    encode,
    parse_segment,
)
from allocator.lifecycle import released
from allocator.model import BOUND, RESERVED, Allocation
from allocator.store_sqlite import SqliteAllocationStore, StateUnopenable
from tests.harness.disk import small_disk_at

ROOT = Path(__file__).resolve().parents[2]


def _alloc(alloc_id: str, device: str, state: str = RESERVED) -> Allocation:
    return Allocation(alloc_id, "alice", "student", (device,), state, created_at=1.0, node="n1")


def _segments(folder: Path) -> list[Path]:
    return sorted(folder.glob("a.sqlite-decisions.*"))


def _in_database(path: Path) -> dict[str, str]:
    """Allocation id -> state, read from the database file alone."""
    conn = sqlite3.connect(path)
    try:
        return dict(conn.execute("SELECT id, state FROM allocations"))
    finally:
        conn.close()


def test_coalesce_keeps_each_allocations_last_state_and_puts_releases_first():
    a = _alloc("a", "MIG-1")
    b = _alloc("b", "MIG-1")
    decisions = [
        LoggedDecision(1, (a,)),
        LoggedDecision(2, (released(a, at=2.0, reason="released"),)),
        LoggedDecision(3, (b,)),
        LoggedDecision(4, (_alloc("c", "MIG-2"),)),
        LoggedDecision(5, (released(_alloc("c", "MIG-2"), at=3.0, reason="released"),)),
    ]
    assert [(x.id, x.state) for x in coalesce(decisions)] == [
        ("a", "released"),
        ("c", "released"),
        ("b", "reserved"),
    ]


def test_a_cut_short_last_line_is_dropped_and_a_damaged_one_before_it_is_refused():
    lines = [encode(LoggedDecision(n, (_alloc(f"a{n}", f"MIG-{n}"),)), "n1") for n in (1, 2)]
    whole = b"".join(lines)
    assert [d.seq for d in parse_segment(whole, "seg")] == [1, 2]
    assert [d.seq for d in parse_segment(whole + lines[0][:25], "seg")] == [1, 2]
    decoded = parse_segment(whole, "seg")[1].allocations[0]
    assert decoded == _alloc("a2", "MIG-2")

    with pytest.raises(DecisionLogCorrupt, match="seg, line 2, is not a decision record"):
        parse_segment(lines[0] + b"garbage\n" + lines[1], "seg")


def _decide_then_die(path: Path, grants: int = 50) -> None:
    """A child process makes `grants` grants (every fifth one released again) on the store at
    `path`, then SIGKILLs itself: no close(), no fold, right after its last commit returned."""
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path.insert(0, {str(ROOT)!r})
        from allocator.lifecycle import released
        from allocator.model import RESERVED, Allocation
        from allocator.store_sqlite import SqliteAllocationStore

        store = SqliteAllocationStore({str(path)!r})
        for n in range({grants}):
            alloc = Allocation(f"a{{n:02d}}", "alice", "student", (f"MIG-{{n}}",), RESERVED,
                               created_at=float(n))
            with store.transaction() as tx:
                tx.insert(alloc)
            if n % 5 == 0:
                with store.transaction() as tx:
                    tx.update(released(alloc, at=100.0 + n, reason="released"))
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert run.returncode == -9, run.stderr.decode()
    assert _segments(path.parent) and _in_database(path) == {}


def test_decisions_answered_before_a_sigkill_are_all_there_after_a_restart(tmp_path):
    _decide_then_die(tmp_path / "a.sqlite")

    store = SqliteAllocationStore(tmp_path / "a.sqlite")
    with store.transaction() as tx:
        live = [a.id for a in tx.live()]
    assert live == [f"a{n:02d}" for n in range(50) if n % 5]
    in_db = _in_database(tmp_path / "a.sqlite")  # folded at the start, before any decision
    assert len(in_db) == 50 and in_db["a05"] == "released" and in_db["a06"] == "reserved"
    assert [p.read_bytes() for p in _segments(tmp_path)] == [b""]  # the dead run's files went
    store.close()


def test_a_full_disk_after_a_crash_refuses_the_start_clearly_and_loses_nothing(short_dir, capsys):
    """SQLite cannot recover a crashed run's WAL on a full disk: the allocator says so and
    exits 2 (its service manager tries again); once there is room, everything is there."""
    with small_disk_at(short_dir / "disk", size="1m") as disk:
        path = disk.path / "a.sqlite"
        _decide_then_die(path, grants=20)
        disk.fill()
        with pytest.raises(StateUnopenable, match=f"the disk under {disk.path} is full"):
            SqliteAllocationStore(path)
        with pytest.raises(SystemExit) as stop:
            cli.main(["--state-dir", str(disk.path), "--db", str(path), "--gpu-backend", "sim"])
        assert stop.value.code == 2
        err = capsys.readouterr().err
        assert f"refusing to start: cannot open {path}: the disk under {disk.path} is full" in err
        assert "nothing is lost" in err

        disk.free()
        store = SqliteAllocationStore(path)  # the refused starts let go of the writer lock
        with store.transaction() as tx:
            assert [a.id for a in tx.live()] == [f"a{n:02d}" for n in range(20) if n % 5]
        store.close()
        assert len(_in_database(path)) == 20


class FoldFailsWhileOpening(SqliteAllocationStore):
    """The real store whose first fold (the one at start) fails, as SQLite fails a write."""

    failures = 1

    def _fold_locked(self) -> None:
        if self.failures:
            self.failures -= 1
            raise sqlite3.OperationalError("database or disk is full")
        super()._fold_locked()


def test_a_start_whose_fold_fails_serves_from_the_log_and_the_ticker_folds_later(tmp_path):
    path = tmp_path / "a.sqlite"
    _decide_then_die(path, grants=20)
    store = FoldFailsWhileOpening(path)  # logged, not fatal
    with store.transaction() as tx:
        assert [a.id for a in tx.live()] == [f"a{n:02d}" for n in range(20) if n % 5]
        tx.insert(_alloc("new", "MIG-new"))  # a decision on top of the unfolded ones
    assert _in_database(path) == {}
    store.checkpoint()  # what the ticker calls every tick
    in_db = _in_database(path)
    assert len(in_db) == 21 and in_db["a05"] == "released" and in_db["new"] == RESERVED
    assert all(p.read_bytes() == b"" for p in _segments(tmp_path))
    store.close()


def test_a_fold_cut_short_before_its_files_are_emptied_is_not_applied_again(tmp_path):
    """The log's sequence numbers, not the files, say what is folded: lines left behind by a
    crash after a commit are skipped, or they would undo what that transaction wrote itself
    (here: the binding made in SQLite by a transaction that read history)."""
    path = tmp_path / "a.sqlite"
    store = SqliteAllocationStore(path)
    with store.transaction() as tx:
        tx.insert(_alloc("a", "MIG-1"))
    [segment] = _segments(tmp_path)
    left_behind = segment.read_bytes()
    with store.transaction() as tx:
        assert tx.get("gone") is None  # not live: this transaction now runs in SQLite
        tx.update(replace(tx.get("a"), state=BOUND, container_id="c1"))
    assert segment.read_bytes() == b""
    segment.write_bytes(left_behind)  # as if the process died between commit and cleanup
    store.close()

    again = SqliteAllocationStore(path)
    with again.transaction() as tx:
        assert [(a.id, a.state, a.container_id) for a in tx.live()] == [("a", BOUND, "c1")]
    again.close()
    assert _in_database(path) == {"a": BOUND}


def test_reads_beyond_the_live_allocations_fold_the_log_first(tmp_path):
    path = tmp_path / "a.sqlite"
    store = SqliteAllocationStore(path)
    with store.transaction() as tx:
        tx.insert(_alloc("a", "MIG-1"))
    with store.transaction() as tx:
        tx.update(released(tx.get("a"), at=2.0, reason="released"))
    assert _in_database(path) == {}  # only logged so far
    with store.transaction() as tx:
        assert tx.get("a").state == "released"  # not live: read from the database
        tx.insert(_alloc("b", "MIG-1"))  # written in the same SQLite transaction
    assert _in_database(path) == {"a": "released", "b": "reserved"}
    assert [p.read_bytes() for p in _segments(tmp_path)] == [b""]
    store.close()


def test_a_full_disk_refuses_the_decision_and_keeps_every_one_answered(short_dir):
    """The log's last page takes a few more lines; then each decision is refused whole (no
    torn line is left for the next one to follow) until the disk has room again."""
    with small_disk_at(short_dir / "disk", size="1m") as disk:
        path = disk.path / "a.sqlite"
        store = SqliteAllocationStore(path)
        kept = []
        for n in range(3):  # the log's last page is partly used: the fill leaves it be
            with store.transaction() as tx:
                tx.insert(_alloc(f"first{n}", f"MIG-first{n}"))
            kept.append(f"first{n}")
        disk.fill()
        with pytest.raises(DecisionLogUnwritable, match="the disk under .* is full"):
            for n in range(500):
                with store.transaction() as tx:
                    tx.insert(_alloc(f"a{n:03d}", f"MIG-{n}"))
                kept.append(f"a{n:03d}")
        with store.transaction() as tx:
            assert sorted(a.id for a in tx.live()) == sorted(kept)  # the refused one: nothing
        [segment] = _segments(disk.path)
        assert [d.allocations[0].id for d in parse_segment(segment.read_bytes(), "s")] == kept

        disk.free()
        with store.transaction() as tx:
            tx.insert(_alloc("after", "MIG-after"))
        logged = [d.allocations[0].id for d in parse_segment(segment.read_bytes(), "s")]
        assert logged == [*kept, "after"]  # after whole lines only
        store.close()
        assert set(_in_database(path)) == {*kept, "after"}
        assert os.stat(segment).st_mode & 0o777 == 0o600


def test_one_writer_per_state_file_and_a_dead_ones_lock_goes_with_it(tmp_path):
    path = tmp_path / "a.sqlite"
    first = SqliteAllocationStore(path)
    with pytest.raises(StateInUse, match="another allocator is using"):
        SqliteAllocationStore(path)
    first.close()
    SqliteAllocationStore(path).close()  # a clean stop lets go
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD.format(root=str(ROOT), path=str(path))],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"holding\n"
        with pytest.raises(StateInUse):
            SqliteAllocationStore(path)
    finally:
        holder.kill()
        holder.wait(30)
    SqliteAllocationStore(path).close()  # the kernel dropped the killed one's lock


_HOLD = """
import sys, time
sys.path.insert(0, {root!r})
from allocator import cli
from allocator.store_sqlite import SqliteAllocationStore, StateUnopenable
store = SqliteAllocationStore({path!r})
print("holding", flush=True)
time.sleep(60)
"""
