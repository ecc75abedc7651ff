"""Allocation state behind an interface; the single-host implementation is SQLite in WAL mode.

One writer: every decision runs inside `store.transaction()` (BEGIN IMMEDIATE, one lock), and
a partial unique index makes "a device in two live allocations" impossible even for a bug.
The cluster implementation puts the same operations on PostgreSQL (allocator/store_postgres.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from ds01.statefiles import private_database
from ds01.wal_checkpoint import WalCheckpointer

from .extensions import Extension
from .model import LIVE_STATES, RELEASED, Allocation

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
"""


CHECKPOINT_COMMITS = 200  # ~1,000 WAL pages: SQLite's own default threshold
CHECKPOINT_EVERY = 1.0  # seconds: fewer commits than that are copied after a second
FALLBACK_CHECKPOINT_PAGES = 10000  # ~40 MiB of WAL: the writer checkpoints past this


class StoreConflict(RuntimeError):
    """A write that would put a device in two live allocations."""


class StoreUnavailable(RuntimeError):
    """The store cannot be reached or keeps refusing: nothing was written; retry later (503)."""


class StoreRetry(RuntimeError):
    """The transaction lost a race (serialization failure) and was rolled back: run it again."""


@dataclass(frozen=True)
class WaitRecord:
    """One queued request as other nodes see it: its devices count against the user's quota."""

    ticket: str
    user: str
    count: int
    deadline: float


class StoreTx(Protocol):
    """The operations one transaction offers."""

    def live(self) -> list[Allocation]: ...

    def get(self, allocation_id: str) -> Allocation | None: ...

    def history(self) -> list[Allocation]: ...

    def insert(self, allocation: Allocation) -> None: ...

    def update(self, allocation: Allocation) -> None: ...

    def prune(self, released_before: float) -> int: ...

    def extensions(self, allocation_ids: list[str]) -> list[Extension]: ...

    def add_extension(self, extension: Extension) -> None: ...

    def holdings(self, user: str) -> dict[str, int]:
        """Devices `user` holds in live allocations, per node, on every node of the store."""
        ...

    def waiting_elsewhere(self, user: str, now: float) -> dict[str, int]:
        """Devices `user` waits for on other nodes (unexpired published waits), per node."""
        ...

    def publish_waits(self, waits: Sequence[WaitRecord]) -> None:
        """Replace this node's published waits (a no-op for a single node)."""
        ...


class AllocationStore(Protocol):
    node: str
    shared: bool  # other allocators write too (the cluster store)
    where: str  # for logs and messages: a path, or host:port/dbname (never a password)

    def transaction(self) -> contextlib.AbstractContextManager[StoreTx]: ...

    def checkpoint(self) -> None:
        """Housekeeping the ticker runs outside the decision lock (SQLite: the WAL copy)."""
        ...

    def close(self) -> None: ...


def allocation_row(allocation: Allocation, node: str) -> tuple[Any, ...]:
    """The 13 columns both stores write (id … node, in schema order): the inverse of
    `allocation_from_row`; an allocation without a node is this store's node's."""
    return (
        allocation.id,
        allocation.user,
        allocation.group,
        allocation.state,
        allocation.created_at,
        allocation.expires_at,
        allocation.container_id,
        allocation.container_name,
        allocation.container_type,
        allocation.profile,
        allocation.released_at,
        allocation.release_reason,
        allocation.node or node,
    )


def extension_row(extension: Extension) -> tuple[Any, ...]:
    """An extension's columns in the order both stores insert them."""
    return (
        extension.allocation_id,
        extension.container_id,
        extension.container_name,
        extension.user,
        extension.kind,
        extension.seconds,
        extension.granted_at,
    )


def allocation_from_row(
    row: Sequence[Any], devices: Sequence[str], vanished: Sequence[str]
) -> Allocation:
    """An allocation from the 13 columns both stores select (id … node, in schema order) and
    its device UUIDs in position order, with those that vanished."""
    return Allocation(
        id=row[0],
        user=row[1],
        group=row[2],
        state=row[3],
        created_at=row[4],
        expires_at=row[5],
        container_id=row[6],
        container_name=row[7],
        container_type=row[8],
        profile=row[9],
        released_at=row[10],
        release_reason=row[11],
        node=row[12],
        devices=tuple(devices),
        vanished=tuple(vanished),
    )


class SqliteTx:
    """One transaction's operations. With `live` (the store's in-memory copy of the live
    allocations, kept by the single writer) live() and get() of a live one need no query."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        live: dict[str, Allocation] | None = None,
        node: str = "",
    ) -> None:
        self._conn = conn
        self.live_cache = live
        self.node = node

    def _load(self, where: str, args: tuple = ()) -> list[Allocation]:
        rows = self._conn.execute(
            "SELECT id, user, grp, state, created_at, expires_at, container_id, container_name,"
            " container_type, profile, released_at, release_reason, node FROM allocations "
            f"{where} ORDER BY created_at, id",
            args,
        ).fetchall()
        if not rows:
            return []
        ids = [row[0] for row in rows]
        devices: dict[str, list[tuple[int, str, int]]] = {i: [] for i in ids}
        for chunk_start in range(0, len(ids), 500):
            chunk = ids[chunk_start : chunk_start + 500]
            marks = ",".join("?" * len(chunk))
            for alloc_id, uuid, position, vanished in self._conn.execute(
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
        self._conn.execute(
            "INSERT INTO allocations (id, user, grp, state, created_at, expires_at, container_id,"
            " container_name, container_type, profile, released_at, release_reason, node)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            allocation_row(allocation, self.node),
        )
        if not allocation.node:
            allocation = replace(allocation, node=self.node)
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

    def prune(self, released_before: float) -> int:
        """Delete allocations released before `released_before` (and their device rows)."""
        cursor = self._conn.execute(
            "DELETE FROM allocations WHERE state = ? AND released_at < ?",
            (RELEASED, released_before),
        )
        return cursor.rowcount

    def extensions(self, allocation_ids: list[str]) -> list[Extension]:
        """The extensions granted under these allocations, oldest first."""
        found: list[Extension] = []
        for start in range(0, len(allocation_ids), 500):
            chunk = allocation_ids[start : start + 500]
            rows = self._conn.execute(
                "SELECT container_id, container_name, allocation_id, user, kind, seconds,"
                " granted_at FROM extensions WHERE allocation_id IN"
                f" ({','.join('?' * len(chunk))}) ORDER BY granted_at, rowid",
                chunk,
            ).fetchall()
            found.extend(Extension(*row) for row in rows)
        return sorted(found, key=lambda e: e.granted_at)

    def add_extension(self, extension: Extension) -> None:
        self._conn.execute(
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


class SqliteAllocationStore:
    """SQLite (WAL) at `path`; one connection, one lock: the single writer.

    Being the only writer, it keeps the live allocations in memory too (loaded once, changed
    only by committed transactions), so the hot path reads no rows at all.
    """

    shared = False

    def __init__(self, path: str | os.PathLike[str], *, node: str = "") -> None:
        self.node = node
        self.path = private_database(path)  # 0600: every user's allocations
        self.where = str(self.path)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(
            str(self.path), isolation_level=None, check_same_thread=False, timeout=10.0
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        # The ticker copies the WAL into the database (checkpoint(), off the decision path: a
        # commit that checkpoints pays the copy and two fsyncs under the lock). The writer
        # still checkpoints by itself if the ticker falls far behind, so the WAL stays bounded.
        self._conn.execute(f"PRAGMA wal_autocheckpoint={FALLBACK_CHECKPOINT_PAGES}")
        # 64 MiB of page cache: the indexes of a long history stay in memory (default: 2 MiB).
        self._conn.execute("PRAGMA cache_size=-65536")
        self._conn.executescript(SCHEMA)
        columns = {row[1] for row in self._conn.execute("PRAGMA table_info(allocations)")}
        if "node" not in columns:  # a database from before the cluster store
            self._conn.execute("ALTER TABLE allocations ADD COLUMN node TEXT NOT NULL DEFAULT ''")
        self._live: dict[str, Allocation] | None = None
        self._checkpointer = WalCheckpointer(self.path)
        self._commits = 0  # since the last checkpoint; read and reset by checkpoint()
        self._checkpointed_at = time.monotonic()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[SqliteTx]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                if self._live is None:
                    self._live = {a.id: a for a in SqliteTx(self._conn).load_live()}
                tx = SqliteTx(self._conn, dict(self._live), self.node)  # a rollback drops the copy
                yield tx
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
            self._live = tx.live_cache
            self._commits += 1

    def checkpoint(self) -> None:
        """Copy committed pages from the WAL into the database (PASSIVE: never blocks the
        writer) once CHECKPOINT_COMMITS commits or CHECKPOINT_EVERY seconds have gathered:
        its two fsyncs are paid a few times a second at most, however busy the allocator."""
        due = self._commits >= CHECKPOINT_COMMITS or (
            self._commits and time.monotonic() - self._checkpointed_at >= CHECKPOINT_EVERY
        )
        if not due:
            return
        copied = self._commits
        if self._checkpointer.run():
            self._commits -= copied  # commits made during the copy count towards the next
            self._checkpointed_at = time.monotonic()

    def close(self) -> None:
        self._checkpointer.close()
        with self._lock:
            self._conn.close()
