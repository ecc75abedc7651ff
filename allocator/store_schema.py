"""The cluster store's schema as ordered, versioned migrations, applied once per database.

Whichever allocator connects first applies what is missing, under a transaction-level advisory
lock, and records each version in `schema_migrations`; the others find them done. A database
newer than this code is refused rather than written with an older idea of the schema.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import psycopg

logger = logging.getLogger(__name__)

MIGRATION_LOCK = 0x0D5010A1  # pg_advisory_xact_lock key: one migrator at a time


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


MIGRATIONS = (
    Migration(
        1,
        "allocations, devices (one live holder per device), extensions",
        """
        CREATE TABLE allocations (
            id TEXT PRIMARY KEY,
            node TEXT NOT NULL,
            user_name TEXT NOT NULL,
            grp TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('reserved', 'bound', 'held', 'released')),
            created_at DOUBLE PRECISION NOT NULL,
            expires_at DOUBLE PRECISION,
            container_id TEXT NOT NULL DEFAULT '',
            container_name TEXT NOT NULL DEFAULT '',
            container_type TEXT NOT NULL DEFAULT 'docker',
            profile TEXT NOT NULL DEFAULT '',
            released_at DOUBLE PRECISION,
            release_reason TEXT NOT NULL DEFAULT ''
        );
        CREATE INDEX allocations_live_by_node ON allocations (node, state)
            WHERE state <> 'released';
        CREATE INDEX allocations_live_by_user ON allocations (user_name)
            WHERE state <> 'released';
        CREATE INDEX allocations_released ON allocations (node, released_at)
            WHERE state = 'released';
        CREATE TABLE allocation_devices (
            allocation_id TEXT NOT NULL REFERENCES allocations (id) ON DELETE CASCADE,
            device_uuid TEXT NOT NULL,
            position INTEGER NOT NULL,
            live BOOLEAN NOT NULL,
            vanished BOOLEAN NOT NULL DEFAULT false,
            PRIMARY KEY (allocation_id, device_uuid)
        );
        CREATE UNIQUE INDEX one_live_holder_per_device ON allocation_devices (device_uuid)
            WHERE live;
        CREATE TABLE extensions (
            seq BIGSERIAL PRIMARY KEY,
            allocation_id TEXT NOT NULL REFERENCES allocations (id) ON DELETE CASCADE,
            container_id TEXT NOT NULL,
            container_name TEXT NOT NULL,
            user_name TEXT NOT NULL,
            kind TEXT NOT NULL,
            seconds DOUBLE PRECISION NOT NULL,
            granted_at DOUBLE PRECISION NOT NULL
        );
        CREATE INDEX extensions_by_allocation ON extensions (allocation_id);
        """,
    ),
    Migration(
        2,
        "waits: queued requests every node counts against the user's quota",
        """
        CREATE TABLE waits (
            ticket TEXT PRIMARY KEY,
            node TEXT NOT NULL,
            user_name TEXT NOT NULL,
            devices INTEGER NOT NULL CHECK (devices > 0),
            deadline DOUBLE PRECISION NOT NULL
        );
        CREATE INDEX waits_by_user ON waits (user_name);
        CREATE INDEX waits_by_node ON waits (node);
        """,
    ),
)


class SchemaTooNew(RuntimeError):
    """The database has migrations this code does not know: upgrade the allocator."""


def apply_migrations(
    conn: psycopg.Connection[Any], migrations: tuple[Migration, ...] = MIGRATIONS
) -> list[int]:
    """Apply the missing migrations in order, in one transaction; returns the versions applied."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY,"
            " name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
        known = {m.version for m in migrations}
        unknown = sorted(done - known)
        if unknown:
            raise SchemaTooNew(
                f"the allocation store has schema version(s) {unknown} that this allocator "
                f"does not know (it knows up to {max(known)}): upgrade ds01 on this node"
            )
        applied = []
        for migration in sorted(migrations, key=lambda m: m.version):
            if migration.version in done:
                continue
            conn.execute(migration.sql.encode())
            conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                (migration.version, migration.name),
            )
            applied.append(migration.version)
            logger.info("applied store migration %d: %s", migration.version, migration.name)
    return applied
