"""The single-host allocation store: SQLite in WAL mode, written through a decision log.

One writer: the store's lock serializes transactions, and a partial unique index makes "a
device in two live allocations" impossible even for a bug. Being the only writer, the store
keeps the live allocations in memory (loaded once, changed only by committed transactions), so
a grant or a release reads no rows; and it commits such a decision by appending one line to
the decision log (allocator/decision_log.py) instead of a SQLite transaction. The ticker
folds the log into SQLite; anything that reads beyond the live allocations (history, prune,
extensions, a released allocation) folds it first, inside its own transaction.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace

from ds01.statefiles import private_database
from ds01.wal_checkpoint import WalCheckpointer

from .decision_log import DecisionLog, LoggedDecision, coalesce
from .extensions import Extension
from .model import LIVE_STATES, RELEASED, Allocation
from .store import StoreConflict, WaitRecord
from .store_rows import allocation_from_row, allocation_row, extension_row

logger = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS allocations (
    id TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    grp TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL,
    container_id TEXT NOT NULL DEFAULT '',
    container_name TEXT NOT NULL DEFAULT '',
    container_type TEXT NOT NULL DEFAULT 'docker',
    profile TEXT NOT NULL DEFAULT '',
    released_at REAL,
    release_reason TEXT NOT NULL DEFAULT '',
    node TEXT NOT NULL DEFAULT ''
);
DROP INDEX IF EXISTS allocations_by_state;
CREATE INDEX IF NOT EXISTS allocations_by_state_released
    ON allocations(state, released_at);
CREATE TABLE IF NOT EXISTS allocation_devices (
    allocation_id TEXT NOT NULL REFERENCES allocations(id) ON DELETE CASCADE,
    device_uuid TEXT NOT NULL,
    position INTEGER NOT NULL,
    live INTEGER NOT NULL,
    vanished INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (allocation_id, device_uuid)
);
CREATE UNIQUE INDEX IF NOT EXISTS one_live_holder_per_device
    ON allocation_devices(device_uuid) WHERE live = 1;
CREATE TABLE IF NOT EXISTS extensions (
    allocation_id TEXT NOT NULL REFERENCES allocations(id) ON DELETE CASCADE,
    container_id TEXT NOT NULL,
    container_name TEXT NOT NULL,
    user TEXT NOT NULL,
    kind TEXT NOT NULL,
    seconds REAL NOT NULL,
    granted_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS extensions_by_allocation ON extensions(allocation_id);
CREATE TABLE IF NOT EXISTS decision_log_folded (through INTEGER NOT NULL);
INSERT INTO decision_log_folded SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM decision_log_folded);
"""


CHECKPOINT_DECISIONS = 1000  # folded since the last copy: ~1,000 WAL pages at 100k rows
CHECKPOINT_EVERY = 1.0  # seconds: fewer decisions than that are copied after a second
FALLBACK_CHECKPOINT_PAGES = 10000  # ~40 MiB of WAL: the writer checkpoints past this
FALLBACK_FOLD_DECISIONS = 20000  # a commit folds the log itself past this (a stalled ticker)


class SqliteTx:
    """One transaction's operations. With `live` (the store's in-memory copy of the live
    allocations, kept by the single writer) live() and get() of a live one need no query.

    With `open_sql`, the writes are only gathered (`logged`, for the decision log at commit)
    until something needs the database: then `open_sql(logged)` begins a SQLite transaction
    holding the log's decisions and these writes, and the rest of the transaction runs in it.
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        live: dict[str, Allocation] | None = None,
        node: str = "",
        open_sql: Callable[[list[Allocation]], None] | None = None,
    ) -> None:
        self._conn = conn
        self.live_cache = live
        self.node = node
        self._open_sql = open_sql if live is not None else None
        self.logged: list[Allocation] = []  # this transaction's writes, until SQL is open

    @property
    def in_sql(self) -> bool:
        """Whether this transaction runs in SQLite (else it commits by the decision log)."""
        return self._open_sql is None

    def _db(self) -> sqlite3.Connection:
        """The connection, inside a SQLite transaction that holds every decision so far."""
        if self._open_sql is not None:
            self._open_sql(self.logged)
            self._open_sql, self.logged = None, []
        return self._conn

    def _load(self, where: str, args: tuple = ()) -> list[Allocation]:
        rows = (
            self._db()
            .execute(
                "SELECT id, user, grp, state, created_at, expires_at, container_id, container_name,"
                " container_type, profile, released_at, release_reason, node FROM allocations "
                f"{where} ORDER BY created_at, id",
                args,
            )
            .fetchall()
        )
        if not rows:
            return []
        ids = [row[0] for row in rows]
        devices: dict[str, list[tuple[int, str, int]]] = {i: [] for i in ids}
        for chunk_start in range(0, len(ids), 500):
            chunk = ids[chunk_start : chunk_start + 500]
            marks = ",".join("?" * len(chunk))
            for alloc_id, uuid, position, vanished in self._db().execute(
                "SELECT allocation_id, device_uuid, position, vanished FROM allocation_devices"
                f" WHERE allocation_id IN ({marks})",
                chunk,
            ):
                devices[alloc_id].append((position, uuid, vanished))
        result = []
        for row in rows:
            devs = sorted(devices[row[0]])
            found = [uuid for _, uuid, _ in devs]
            result.append(allocation_from_row(row, found, [u for _, u, gone in devs if gone]))
        return result

    def live(self) -> list[Allocation]:
        """Live allocations through the state index: the cost follows them, not the history."""
        if self.live_cache is not None:
            return sorted(self.live_cache.values(), key=lambda a: (a.created_at, a.id))
        return self.load_live()

    def load_live(self) -> list[Allocation]:
        marks = ",".join("?" * len(LIVE_STATES))
        return self._load(f"WHERE state IN ({marks})", LIVE_STATES)

    def get(self, allocation_id: str) -> Allocation | None:
        if self.live_cache is not None and allocation_id in self.live_cache:
            return self.live_cache[allocation_id]
        found = self._load("WHERE id = ?", (allocation_id,))
        return found[0] if found else None

    def _remember(self, allocation: Allocation) -> None:
        if self.live_cache is None:
            return
        if allocation.state == RELEASED:
            self.live_cache.pop(allocation.id, None)
        else:
            self.live_cache[allocation.id] = allocation

    def history(self) -> list[Allocation]:
        return self._load("")

    def insert(self, allocation: Allocation) -> None:
        if not allocation.node:
            allocation = replace(allocation, node=self.node)
        if not self.in_sql:
            self._log(allocation)
            return
        self._conn.execute(
            "INSERT INTO allocations (id, user, grp, state, created_at, expires_at, container_id,"
            " container_name, container_type, profile, released_at, release_reason, node)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            allocation_row(allocation, self.node),
        )
        live = 0 if allocation.state == RELEASED else 1
        try:
            self._conn.executemany(
                "INSERT INTO allocation_devices (allocation_id, device_uuid, position, live)"
                " VALUES (?, ?, ?, ?)",
                [(allocation.id, uuid, i, live) for i, uuid in enumerate(allocation.devices)],
            )
        except sqlite3.IntegrityError as exc:
            raise StoreConflict(
                f"allocation {allocation.id}: a device is already held ({exc})"
            ) from exc
        self._remember(allocation)

    def update(self, allocation: Allocation) -> None:
        """Write state, container, deadlines and vanished marks; devices never change."""
        if not self.in_sql:
            self._log(allocation)
            return
        self._conn.execute(
            "UPDATE allocations SET state = ?, expires_at = ?, container_id = ?,"
            " container_name = ?, released_at = ?, release_reason = ? WHERE id = ?",
            (
                allocation.state,
                allocation.expires_at,
                allocation.container_id,
                allocation.container_name,
                allocation.released_at,
                allocation.release_reason,
                allocation.id,
            ),
        )
        gone = list(allocation.vanished)
        self._conn.execute(  # one statement: each one is a round through SQLite's VM
            "UPDATE allocation_devices SET live = ?, vanished = (device_uuid IN "
            f"({','.join('?' * len(gone))})) WHERE allocation_id = ?",
            (0 if allocation.state == RELEASED else 1, *gone, allocation.id),
        )
        self._remember(allocation)

    def _log(self, allocation: Allocation) -> None:
        """Gather a write for the decision log, checking in memory what the unique index would
        check at the fold: no device of a live allocation is live in another one."""
        assert self.live_cache is not None  # gathering needs the live copy
        if allocation.state != RELEASED:
            wanted = set(allocation.devices)
            for other in self.live_cache.values():
                if other.id != allocation.id and not wanted.isdisjoint(other.devices):
                    taken = ",".join(sorted(wanted.intersection(other.devices)))
                    raise StoreConflict(
                        f"allocation {allocation.id}: {taken} already held by {other.id}"
                    )
        self.logged.append(allocation)
        self._remember(allocation)

    def upsert(self, allocations: Sequence[Allocation]) -> None:
        """Write each allocation's whole state, inserting or updating (folding the log: a
        decision may be folded again after a crash, and ends in the same rows)."""
        self._conn.executemany(
            "INSERT INTO allocations (id, user, grp, state, created_at, expires_at, container_id,"
            " container_name, container_type, profile, released_at, release_reason, node)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET"
            " state = excluded.state, expires_at = excluded.expires_at,"
            " container_id = excluded.container_id, container_name = excluded.container_name,"
            " released_at = excluded.released_at, release_reason = excluded.release_reason",
            [allocation_row(a, self.node) for a in allocations],
        )
        try:
            self._conn.executemany(
                "INSERT INTO allocation_devices (allocation_id, device_uuid, position, live,"
                " vanished) VALUES (?, ?, ?, ?, ?) ON CONFLICT(allocation_id, device_uuid)"
                " DO UPDATE SET live = excluded.live, vanished = excluded.vanished",
                [
                    (a.id, uuid, i, int(a.state != RELEASED), int(uuid in a.vanished))
                    for a in allocations
                    for i, uuid in enumerate(a.devices)
                ],
            )
        except sqlite3.IntegrityError as exc:
            raise StoreConflict(f"folding the decision log: a device held twice ({exc})") from exc

    def prune(self, released_before: float) -> int:
        """Delete allocations released before `released_before` (and their device rows)."""
        cursor = self._db().execute(
            "DELETE FROM allocations WHERE state = ? AND released_at < ?",
            (RELEASED, released_before),
        )
        return cursor.rowcount

    def extensions(self, allocation_ids: list[str]) -> list[Extension]:
        """The extensions granted under these allocations, oldest first."""
        found: list[Extension] = []
        for start in range(0, len(allocation_ids), 500):
            chunk = allocation_ids[start : start + 500]
            rows = (
                self._db()
                .execute(
                    "SELECT container_id, container_name, allocation_id, user, kind, seconds,"
                    " granted_at FROM extensions WHERE allocation_id IN"
                    f" ({','.join('?' * len(chunk))}) ORDER BY granted_at, rowid",
                    chunk,
                )
                .fetchall()
            )
            found.extend(Extension(*row) for row in rows)
        return sorted(found, key=lambda e: e.granted_at)

    def add_extension(self, extension: Extension) -> None:
        self._db().execute(
            "INSERT INTO extensions (allocation_id, container_id, container_name, user, kind,"
            " seconds, granted_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            extension_row(extension),
        )

    def holdings(self, user: str) -> dict[str, int]:
        """One node holds everything: the live allocations, grouped by their node."""
        found: dict[str, int] = {}
        for alloc in self.live():
            if alloc.user == user:
                node = alloc.node or self.node
                found[node] = found.get(node, 0) + len(alloc.devices)
        return found

    def waiting_elsewhere(self, user: str, now: float) -> dict[str, int]:
        return {}  # a single node: every wait is in this allocator's own queue

    def publish_waits(self, waits: Sequence[WaitRecord]) -> None:
        return None


class StateUnopenable(RuntimeError):
    """The database cannot be opened (a full disk, an I/O error): the allocator refuses to
    start, and nothing is lost; the database and its decision log stay as they are."""


def _connect(path: os.PathLike[str]) -> sqlite3.Connection:
    """The one connection, set up and migrated (an older database gains its `node` column)."""
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=10.0)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        # The ticker copies the WAL into the database (checkpoint(), off the decision path: a
        # commit that checkpoints pays the copy and two fsyncs under the lock). The writer
        # still checkpoints by itself if the ticker falls far behind, so the WAL stays bounded.
        conn.execute(f"PRAGMA wal_autocheckpoint={FALLBACK_CHECKPOINT_PAGES}")
        # 64 MiB of page cache: the indexes of a long history stay in memory (default: 2 MiB).
        conn.execute("PRAGMA cache_size=-65536")
        conn.executescript(SCHEMA)
        columns = {row[1] for row in conn.execute("PRAGMA table_info(allocations)")}
        if "node" not in columns:  # a database from before the cluster store
            conn.execute("ALTER TABLE allocations ADD COLUMN node TEXT NOT NULL DEFAULT ''")
    except BaseException:
        conn.close()
        raise
    return conn


def _why_unopenable(path: os.PathLike[str], exc: Exception) -> str:
    """What went wrong and what to do, naming a full disk when that is the cause (SQLite
    reports it as a disk I/O error when a crashed run's WAL cannot be recovered)."""
    folder = os.path.dirname(os.fspath(path)) or "."
    try:
        full = os.statvfs(folder).f_bavail == 0
    except OSError:
        full = False
    if full:
        what = f"the disk under {folder} is full ({exc})"
    else:
        what = str(exc)
    return (
        f"cannot open {os.fspath(path)}: {what}; nothing is lost (the database and its "
        "decision log stay as they are): fix that and start again"
    )


class SqliteAllocationStore:
    """SQLite (WAL) at `path` with its decision log beside it; one connection, one lock."""

    shared = False

    def __init__(self, path: str | os.PathLike[str], *, node: str = "") -> None:
        self.node = node
        self.path = private_database(path)  # 0600: every user's allocations
        self.where = str(self.path)
        self._lock = threading.Lock()
        self._log = DecisionLog(self.path, node)  # first: StateInUse before SQLite is touched
        conn = None
        try:
            conn = self._conn = _connect(self.path)
            (self._through,) = self._conn.execute(
                "SELECT through FROM decision_log_folded"
            ).fetchone()  # the last decision folded
            self._folded = 0  # decisions folded since the last WAL copy; reset by checkpoint()
            self._live = self._fold_left_over()
            self._log.open()
            self._checkpointer = WalCheckpointer(self.path)
        except (sqlite3.Error, OSError) as exc:
            if conn is not None:
                conn.close()
            self._log.release()
            raise StateUnopenable(_why_unopenable(self.path, exc)) from exc
        self._checkpointed_at = time.monotonic()

    def _fold_left_over(self) -> dict[str, Allocation]:
        """Fold what the last run logged and did not fold (a crash, a full disk at exit), and
        let its files go; the live allocations. If the fold fails, the decisions stay pending
        for the ticker."""
        self._log.pending = self._log.recover(self._through)
        left = len(self._log.pending)
        try:
            self._fold_locked()
        except sqlite3.Error:
            logger.exception("cannot fold the last run's decision log yet: %s", self.path)
        else:
            if left:
                logger.info("folded %d decisions the last run left unfolded", left)
        live = {a.id: a for a in SqliteTx(self._conn).load_live()}
        for allocation in coalesce(self._log.pending):
            live.pop(allocation.id, None)
            if allocation.state != RELEASED:
                live[allocation.id] = allocation
        return live

    @contextlib.contextmanager
    def transaction(self) -> Iterator[SqliteTx]:
        with self._lock:
            tx = SqliteTx(self._conn, dict(self._live), self.node, self._open_sql)
            try:
                yield tx  # a rollback drops the copy of the live allocations
                if tx.in_sql:
                    self._write_folded()
                elif tx.logged:
                    self._log.append(tx.logged)
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
            assert tx.live_cache is not None
            self._live = tx.live_cache
            if len(self._log.pending) >= FALLBACK_FOLD_DECISIONS:
                self._fold_quietly()

    def _open_sql(self, writes: list[Allocation]) -> None:
        """Begin a transaction holding every logged decision, then this one's `writes`."""
        self._conn.execute("BEGIN IMMEDIATE")
        if self._log.pending or writes:
            this_one = LoggedDecision(self._log.last_seq + 1, tuple(writes))
            SqliteTx(self._conn, node=self.node).upsert(coalesce([*self._log.pending, this_one]))

    def _write_folded(self) -> None:
        """Inside the transaction `_open_sql` began: note how far the log is folded, commit,
        and let the log forget what the database now holds. With nothing to fold, nothing is
        written (a read still answers on a full disk)."""
        through = self._log.last_seq
        if through != self._through:
            self._conn.execute("UPDATE decision_log_folded SET through = ?", (through,))
        self._conn.execute("COMMIT")
        self._folded += through - self._through
        self._through = through
        self._log.folded(through)

    def fold(self) -> None:
        """Write every logged decision into the database now (one transaction)."""
        with self._lock:
            if self._log.pending:
                self._fold_locked()

    def _fold_locked(self) -> None:
        """Under the lock: fold the log in one transaction; a failure rolls it back and
        leaves every decision pending."""
        try:
            self._open_sql([])
            self._write_folded()
        except BaseException:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise

    def _fold_quietly(self) -> None:
        """The commit's own fold for a stalled ticker: its decision is logged already, so a
        failure here is only logged (the log keeps everything until a fold succeeds)."""
        try:
            self._fold_locked()
        except (sqlite3.Error, StoreConflict):
            logger.exception("cannot fold the decision log into %s", self.path)

    def checkpoint(self) -> None:
        """Fold the decision log, then copy committed pages from the WAL into the database
        (PASSIVE: never blocks the writer) once CHECKPOINT_DECISIONS decisions or
        CHECKPOINT_EVERY seconds have gathered: its two fsyncs are paid a few times a second
        at most, however busy the allocator."""
        self.fold()
        due = self._folded >= CHECKPOINT_DECISIONS or (
            self._folded and time.monotonic() - self._checkpointed_at >= CHECKPOINT_EVERY
        )
        if not due:
            return
        copied = self._folded
        if self._checkpointer.run():
            self._folded -= copied  # decisions folded during the copy count towards the next
            self._checkpointed_at = time.monotonic()

    def close(self) -> None:
        """Fold what is logged (if the disk allows; else the next start does), then close."""
        try:
            self.fold()
        except (sqlite3.Error, StoreConflict):
            logger.exception("decision log left for the next start to fold: %s", self.path)
        self._checkpointer.close()
        with self._lock:
            self._conn.close()
            self._log.release()
