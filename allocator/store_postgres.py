"""The cluster store: every node's allocator shares one PostgreSQL (psycopg 3), SERIALIZABLE.

Each allocator sees its own node's allocations (`live`, `get`), while quota reads count a user's
devices and published waits on every node. Allocators take turns (a session advisory
lock before BEGIN); a lost race (serialization failure) still rolls back and raises StoreRetry,
which the service replays; a lost connection raises StoreUnavailable and the
next transaction connects afresh, so the allocator recovers by itself when PostgreSQL is back.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from .extensions import Extension
from .model import LIVE_STATES, RELEASED, Allocation
from .store import StoreConflict, StoreRetry, StoreUnavailable, WaitRecord
from .store_rows import allocation_from_row, allocation_row, extension_row
from .store_schema import SchemaTooNew, apply_migrations

logger = logging.getLogger(__name__)

_COLUMNS = (
    "id, user_name, grp, state, created_at, expires_at, container_id, container_name,"
    " container_type, profile, released_at, release_reason, node"
)
_RACES = (pg_errors.SerializationFailure, pg_errors.DeadlockDetected)
WRITER_LOCK = 0x0D5010A2  # pg_advisory_lock key: one allocator transaction at a time
# Server side (per session): a silent peer is declared dead after about 5 + 2 * 3 = 11 s.
SERVER_KEEPALIVES = {
    "tcp_keepalives_idle": 5,
    "tcp_keepalives_interval": 2,
    "tcp_keepalives_count": 3,
}
# Client side (libpq): a PostgreSQL host that vanished is noticed as fast.
CLIENT_KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
}


class PostgresTx:
    """One SERIALIZABLE transaction's operations; reads always come from the database."""

    def __init__(self, conn: psycopg.Connection[Any], node: str) -> None:
        self._conn = conn
        self.node = node

    def _load(self, where: str, args: Sequence[Any] = ()) -> list[Allocation]:
        """Allocations and their devices in one round trip (devices in position order)."""
        rows = self._conn.execute(
            f"SELECT {_COLUMNS},"
            " (SELECT array_agg(d.device_uuid ORDER BY d.position) FROM allocation_devices d"
            "  WHERE d.allocation_id = a.id),"
            " (SELECT array_agg(d.device_uuid ORDER BY d.position) FROM allocation_devices d"
            "  WHERE d.allocation_id = a.id AND d.vanished)"
            f" FROM allocations a {where} ORDER BY created_at, id",
            args,
        ).fetchall()
        return [allocation_from_row(row, row[13] or (), row[14] or ()) for row in rows]

    def live(self) -> list[Allocation]:
        """This node's live allocations: reconcile, expiry and adoption never touch another's."""
        return self._load("WHERE node = %s AND state = ANY(%s)", (self.node, list(LIVE_STATES)))

    def get(self, allocation_id: str) -> Allocation | None:
        found = self._load("WHERE id = %s AND node = %s", (allocation_id, self.node))
        return found[0] if found else None

    def history(self) -> list[Allocation]:
        return self._load("WHERE node = %s", (self.node,))

    def insert(self, allocation: Allocation) -> None:
        """The allocation and its devices in one statement (one round trip)."""
        try:
            self._conn.execute(
                f"WITH made AS (INSERT INTO allocations ({_COLUMNS})"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id)"
                " INSERT INTO allocation_devices (allocation_id, device_uuid, position, live)"
                " SELECT made.id, dev.uuid, dev.pos - 1, %s FROM made,"
                " unnest(%s::text[]) WITH ORDINALITY AS dev(uuid, pos)",
                (
                    *allocation_row(allocation, self.node),
                    allocation.state != RELEASED,
                    list(allocation.devices),
                ),
            )
        except pg_errors.UniqueViolation as exc:
            raise StoreConflict(
                f"allocation {allocation.id}: a device is already held ({exc})"
            ) from exc

    def update(self, allocation: Allocation) -> None:
        """Write state, container, deadlines and vanished marks; devices never change."""
        self._conn.execute(
            "WITH changed AS (UPDATE allocations SET state = %s, expires_at = %s,"
            " container_id = %s, container_name = %s, released_at = %s, release_reason = %s"
            " WHERE id = %s AND node = %s RETURNING id)"
            " UPDATE allocation_devices SET live = %s, vanished = (device_uuid = ANY(%s))"
            " WHERE allocation_id IN (SELECT id FROM changed)",
            (
                allocation.state,
                allocation.expires_at,
                allocation.container_id,
                allocation.container_name,
                allocation.released_at,
                allocation.release_reason,
                allocation.id,
                self.node,
                allocation.state != RELEASED,
                list(allocation.vanished),
            ),
        )

    def prune(self, released_before: float) -> int:
        """Delete this node's allocations released before `released_before`."""
        cursor = self._conn.execute(
            "DELETE FROM allocations WHERE node = %s AND state = %s AND released_at < %s",
            (self.node, RELEASED, released_before),
        )
        return cursor.rowcount

    def extensions(self, allocation_ids: list[str]) -> list[Extension]:
        rows = self._conn.execute(
            "SELECT container_id, container_name, allocation_id, user_name, kind, seconds,"
            " granted_at FROM extensions WHERE allocation_id = ANY(%s) ORDER BY granted_at, seq",
            (allocation_ids,),
        ).fetchall()
        return [Extension(*row) for row in rows]

    def add_extension(self, extension: Extension) -> None:
        self._conn.execute(
            "INSERT INTO extensions (allocation_id, container_id, container_name, user_name,"
            " kind, seconds, granted_at) VALUES (%s, %s, %s, %s, %s, %s, %s)",
            extension_row(extension),
        )

    def holdings(self, user: str) -> dict[str, int]:
        """Devices of `user`'s live allocations on every node, per node (the quota's input)."""
        rows = self._conn.execute(
            "SELECT a.node, count(*) FROM allocations a JOIN allocation_devices d"
            " ON d.allocation_id = a.id WHERE a.user_name = %s AND a.state = ANY(%s)"
            " GROUP BY a.node",
            (user, list(LIVE_STATES)),
        ).fetchall()
        return {node: int(count) for node, count in rows}

    def waiting_elsewhere(self, user: str, now: float) -> dict[str, int]:
        rows = self._conn.execute(
            "SELECT node, sum(devices) FROM waits WHERE user_name = %s AND node <> %s"
            " AND deadline > %s GROUP BY node",
            (user, self.node, now),
        ).fetchall()
        return {node: int(total) for node, total in rows}

    def publish_waits(self, waits: Sequence[WaitRecord]) -> None:
        self._conn.execute("DELETE FROM waits WHERE node = %s", (self.node,))
        if waits:
            with self._conn.cursor() as cursor:
                cursor.executemany(
                    "INSERT INTO waits (ticket, node, user_name, devices, deadline)"
                    " VALUES (%s, %s, %s, %s, %s)",
                    [(w.ticket, self.node, w.user, w.count, w.deadline) for w in waits],
                )


class PostgresAllocationStore:
    """One connection per allocator (its decisions are serialised by the allocator's lock).

    The connection is made on first use and after every failure, so an allocator started or
    running while PostgreSQL is down answers 503 and recovers when it is back; migrations run
    on the first connection (once per database, under an advisory lock).
    """

    shared = True  # several allocators write: read the truth, replay lost races, publish waits

    def __init__(
        self, dsn: str, *, node: str, connect_timeout: float = 5.0, lock_timeout: float = 10.0
    ) -> None:
        if not node:
            raise ValueError("a cluster store needs this allocator's node name")
        self.node = node
        self._dsn, self._connect_timeout = dsn, connect_timeout
        self.lock_timeout = lock_timeout
        self._idle_ms = int(lock_timeout * 1000)
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None
        self._migrated = False
        self.where = _describe(dsn)

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        try:
            conn = psycopg.connect(
                make_conninfo(self._dsn, **CLIENT_KEEPALIVES),
                connect_timeout=max(1, int(self._connect_timeout)),
                autocommit=True,
            )
        except psycopg.Error as exc:
            raise self._unavailable(exc) from exc
        try:
            if not self._migrated:
                apply_migrations(conn)
                self._migrated = True
            # Waiting longer than this for the writer lock means a stuck peer: answer 503.
            conn.execute(f"SET lock_timeout = '{int(self.lock_timeout * 1000)}ms'")
            # A node that dies or is cut off mid-turn must not keep the writer lock: the
            # server ends a session idle in a transaction, or whose peer stops answering
            # keepalives, within about the lock timeout (its locks go with it).
            conn.execute(f"SET idle_in_transaction_session_timeout = '{self._idle_ms}ms'")
            for name, value in SERVER_KEEPALIVES.items():
                conn.execute(f"SET {name} = {value}")
            conn.isolation_level = psycopg.IsolationLevel.SERIALIZABLE
        except (psycopg.Error, SchemaTooNew) as exc:
            conn.close()
            raise self._unavailable(exc) from exc
        logger.info("connected to the allocation store at %s (node %s)", self.where, self.node)
        self._conn = conn
        return conn

    @contextlib.contextmanager
    def transaction(self) -> Iterator[PostgresTx]:
        """SERIALIZABLE, taken after the cluster's writer lock (before BEGIN, so the snapshot
        is taken once the lock is held): allocators take turns instead of aborting each other
        on predicate-lock conflicts; SERIALIZABLE stays the guarantee."""
        with self._lock:
            conn = self._connection()
            try:
                conn.execute("SELECT pg_advisory_lock(%s)", (WRITER_LOCK,))
                try:
                    with conn.transaction():
                        yield PostgresTx(conn, self.node)
                finally:
                    self._unlock(conn)
            except _RACES as exc:
                raise StoreRetry(f"transaction lost a race in {self.where}: {exc}") from exc
            except psycopg.Error as exc:
                lost = isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)
                if not (lost or conn.closed or conn.broken):
                    raise  # a bug in a statement, not an outage
                self._discard(conn)  # e.g. the server ended the session: connect afresh
                raise self._unavailable(exc) from exc

    def _unlock(self, conn: psycopg.Connection[Any]) -> None:
        if conn.closed or conn.broken:
            return  # the server dropped the session, and its lock with it
        try:
            conn.execute("SELECT pg_advisory_unlock(%s)", (WRITER_LOCK,))
        except psycopg.Error:
            self._discard(conn)  # a new session next time; the old one's lock goes with it

    def _discard(self, conn: psycopg.Connection[Any]) -> None:
        with contextlib.suppress(psycopg.Error):
            conn.close()
        self._conn = None

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        logger.warning("allocation store at %s unavailable: %s", self.where, first)
        return StoreUnavailable(
            f"the allocation store (PostgreSQL at {self.where}) is unavailable ({first}); "
            "nothing was changed, retry in a moment"
        )

    def checkpoint(self) -> None:
        return None  # the server does its own

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._discard(self._conn)


def _describe(dsn: str) -> str:
    """host:port/dbname of a DSN, never its password (for messages and logs)."""
    try:
        info = conninfo_to_dict(dsn)
    except psycopg.Error:
        return "an unparsable DSN"
    host = info.get("host") or "localhost"
    return f"{host}:{info.get('port') or 5432}/{info.get('dbname') or '?'}"
