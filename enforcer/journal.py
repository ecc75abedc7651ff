"""The durable queue: every accepted alert is a SQLite row before the webhook is acknowledged.

`kind` is the endpoint's action (`stop` from /alerts, `notify` from /notify) or a follow-up
(`remove`). A repeat of an alert is a duplicate only while a row for the same (kind,
fingerprint, container, reason) is still open — `pending`, or `watching` (a stopped container
watched for a quick restart) — or, for a warning, once it was delivered for that startsAt. A
skip or a failure is never final: the next repeat is verified afresh, and no startsAt a
sender chose can make a later alert a duplicate. Rows stay open until the worker records a
decision, so a crash between the acknowledgement and the action only delays the action. WAL
mode, synchronous=FULL.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ds01.statefiles import private_database

from .payload import Alert

KINDS = ("stop", "notify", "remove")

SCHEMA_VERSION = 2
_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    starts_at REAL NOT NULL,
    container_id TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    alert TEXT NOT NULL,
    received_at REAL NOT NULL,
    due_at REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    decision TEXT,
    detail TEXT,
    finished_at REAL,
    watch_started REAL
);
CREATE INDEX IF NOT EXISTS jobs_pending ON jobs (state, due_at);
CREATE INDEX IF NOT EXISTS jobs_received ON jobs (state, received_at);
CREATE INDEX IF NOT EXISTS jobs_key ON jobs (fingerprint, kind, container_id, reason, state);
"""
# Version 1 kept one row per (fingerprint, startsAt, kind) forever: copy its rows over.
_MIGRATE_V1 = """
ALTER TABLE jobs RENAME TO jobs_v1;
DROP INDEX IF EXISTS jobs_pending;
DROP INDEX IF EXISTS jobs_received;
"""
_COPY_V1 = """
INSERT INTO jobs (id, kind, fingerprint, starts_at, container_id, reason, alert, received_at,
    due_at, state, attempts, last_error, decision, detail, finished_at)
SELECT id, kind, fingerprint, starts_at, container_id, json_extract(alert, '$.labels.reason'),
    alert, received_at, due_at, state, attempts, last_error, decision, detail, finished_at
FROM jobs_v1;
DROP TABLE jobs_v1;
"""
# A repeat is a duplicate while a row with the same key is open; a warning also once delivered.
_DUPLICATE = """
SELECT 1 FROM jobs WHERE fingerprint = ? AND kind = ? AND container_id = ? AND reason = ?
AND (state IN ('pending', 'watching')
     OR (kind = 'notify' AND state = 'done' AND decision = 'notified' AND starts_at = ?))
LIMIT 1
"""


@dataclass(frozen=True)
class Job:
    """One journaled action, as the worker sees it."""

    id: int
    kind: str
    alert: Alert
    received_at: float
    due_at: float
    attempts: int
    state: str = "pending"  # or "watching": stopped, watched for a quick restart
    watch_started: float | None = None


@dataclass
class _Batch:
    """Rows of one webhook waiting for the next group commit."""

    rows: list[tuple[Any, ...]]
    result: list[bool] | None = None
    error: BaseException | None = None


@dataclass(frozen=True)
class QueueStats:
    depth: int
    oldest_received_at: float | None  # None when nothing is pending


class Journal:
    """SQLite journal shared by the web threads and the workers (one connection, one lock)."""

    def __init__(self, path: str | Path) -> None:
        self.path = private_database(path)  # 0600: every user's alerts
        self._lock = threading.Lock()
        self._waiting: list[_Batch] = []
        self._waiting_lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._migrate()

    def _migrate(self) -> None:
        """Create the schema, or bring a version-1 journal (unique startsAt key) up to date."""
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        old = self._db.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'jobs'"
        ).fetchone()
        if old is not None and version < SCHEMA_VERSION and "UNIQUE" in old[0]:
            self._db.executescript(f"BEGIN; {_MIGRATE_V1} {_SCHEMA} {_COPY_V1} COMMIT;")
        else:
            self._db.executescript(_SCHEMA)
        self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _write(self, sql: str, rows: Iterable[Sequence[Any]]) -> list[int]:
        """Run `sql` for each row in one transaction; the row counts it changed, in order."""
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                counts = []
                for row in rows:
                    cur.execute(sql, row)
                    counts.append(cur.rowcount)
                cur.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    cur.execute("ROLLBACK")
                raise
            return counts

    def enqueue(
        self, kind: str, alerts: Sequence[Alert], *, now: float, due_at: float | None = None
    ) -> list[bool]:
        """Journal the alerts durably; True for each that was new, False for a repeat.

        Group commit: webhooks arriving while a commit is in flight share the next one, so a
        burst of concurrent posts costs a few commits, not one each.
        """
        if kind not in KINDS:
            raise ValueError(f"unknown job kind {kind!r}")
        if not alerts:
            return []
        due = now if due_at is None else due_at
        batch = _Batch(
            [
                (
                    kind,
                    a.fingerprint,
                    a.starts_at,
                    a.container_id,
                    a.reason,
                    json.dumps(a.to_json(), separators=(",", ":")),
                    now,
                    due,
                )
                for a in alerts
            ]
        )
        with self._waiting_lock:
            self._waiting.append(batch)
        with self._lock:
            if batch.result is None and batch.error is None:
                self._commit_waiting()
        if batch.error is not None:
            raise batch.error
        assert batch.result is not None
        return batch.result

    def _commit_waiting(self) -> None:
        """Insert every waiting batch in one transaction (caller holds the write lock)."""
        with self._waiting_lock:
            batches, self._waiting = self._waiting, []
        sql = (
            "INSERT INTO jobs (kind, fingerprint, starts_at, container_id, reason, alert, "
            "received_at, due_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
        )
        cur = self._db.cursor()
        try:
            cur.execute("BEGIN IMMEDIATE")
            results = []
            for batch in batches:
                flags = []
                for row in batch.rows:
                    kind, fingerprint, starts_at, container_id, reason = row[:5]
                    key = (fingerprint, kind, container_id, reason, starts_at)
                    if cur.execute(_DUPLICATE, key).fetchone() is not None:
                        flags.append(False)
                        continue
                    cur.execute(sql, row)
                    flags.append(True)
                results.append(flags)
            cur.execute("COMMIT")
        except Exception as exc:  # noqa: BLE001 - re-raised in every waiting webhook's thread
            if self._db.in_transaction:
                cur.execute("ROLLBACK")
            for batch in batches:
                batch.error = exc
            return
        for batch, flags in zip(batches, results, strict=True):
            batch.result = flags

    def due(self, now: float, *, limit: int = 100, exclude: Iterable[int] = ()) -> list[Job]:
        """Open jobs (pending or watching) whose time has come, oldest first."""
        skip = tuple(exclude)
        marks = ",".join("?" * len(skip))
        where = f"AND id NOT IN ({marks})" if skip else ""
        sql = (
            "SELECT id, kind, alert, received_at, due_at, attempts, state, watch_started "
            f"FROM jobs WHERE state IN ('pending', 'watching') AND due_at <= ? {where} "
            "ORDER BY due_at, id LIMIT ?"
        )
        with self._lock:
            rows = self._db.execute(sql, (now, *skip, limit)).fetchall()
        return [
            Job(
                id=r[0],
                kind=r[1],
                alert=Alert.from_json(json.loads(r[2])),
                received_at=r[3],
                due_at=r[4],
                attempts=r[5],
                state=r[6],
                watch_started=r[7],
            )
            for r in rows
        ]

    def finish(self, job_id: int, *, decision: str, detail: str, now: float) -> None:
        self._write(
            "UPDATE jobs SET state = 'done', decision = ?, detail = ?, finished_at = ? "
            "WHERE id = ?",
            [(decision, detail, now, job_id)],
        )

    def watch(self, job_id: int, *, decision: str, detail: str, now: float, due_at: float) -> None:
        """The action is done (recorded as `decision`); look again at `due_at` for a restart."""
        self._write(
            "UPDATE jobs SET state = 'watching', decision = ?, detail = ?, finished_at = ?, "
            "due_at = ?, watch_started = ? WHERE id = ?",
            [(decision, detail, now, due_at, now, job_id)],
        )

    def reschedule(self, job_id: int, *, due_at: float) -> None:
        """Look at an open row again at `due_at` (no attempt counted: nothing failed)."""
        self._write("UPDATE jobs SET due_at = ? WHERE id = ?", [(due_at, job_id)])

    def end_watch(self, job_id: int, *, note: str, now: float) -> None:
        """Nothing more to watch: close the row, keeping the decision it was watched for."""
        self._write(
            "UPDATE jobs SET state = 'done', last_error = ?, finished_at = ? WHERE id = ?",
            [(note, now, job_id)],
        )

    def retry_later(self, job_id: int, *, error: str, due_at: float) -> None:
        self._write(
            "UPDATE jobs SET attempts = attempts + 1, last_error = ?, due_at = ? WHERE id = ?",
            [(error, due_at, job_id)],
        )

    def stats(self) -> QueueStats:
        with self._lock:
            depth, oldest = self._db.execute(
                "SELECT COUNT(*), MIN(received_at) FROM jobs WHERE state = 'pending'"
            ).fetchone()
        return QueueStats(depth=depth, oldest_received_at=oldest)

    def next_due_at(self) -> float | None:
        with self._lock:
            (due,) = self._db.execute(
                "SELECT MIN(due_at) FROM jobs WHERE state IN ('pending', 'watching')"
            ).fetchone()
        return due

    def prune(self, *, finished_before: float) -> int:
        """Forget decisions older than the retention."""
        counts = self._write(
            "DELETE FROM jobs WHERE state = 'done' AND finished_at < ?", [(finished_before,)]
        )
        return counts[0]

    def decisions(self) -> list[dict[str, Any]]:
        """Every row with its state and decision, for inspection (and tests)."""
        with self._lock:
            cur = self._db.execute(
                "SELECT id, kind, fingerprint, starts_at, container_id, state, attempts, "
                "last_error, decision, detail FROM jobs ORDER BY id"
            )
            names = [c[0] for c in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
