"""The durable queue: every accepted alert is a SQLite row before the webhook is acknowledged.

One row per (fingerprint, startsAt, kind) however often Alertmanager repeats an alert; `kind`
is the endpoint's action (`stop` from /alerts, `notify` from /notify) or a follow-up
(`remove`). Rows stay `pending` until the worker records a decision, so a crash between the
acknowledgement and the action only delays the action.

Three connections, so a webhook never waits behind the workers: intake inserts on its own
connection (synchronous=FULL: an acknowledged alert survives even a power cut) with group
commit; the workers' bookkeeping writes on another (synchronous=NORMAL: survives SIGKILL; a
decision lost to a power cut is re-verified, and skipped, after the restart); reads on a third
(WAL readers never wait for writers). One write lock orders the two writers, so neither ever
meets SQLite's busy back-off; a worker holds it for one short UPDATE, never while it reads.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .payload import Alert

KINDS = ("stop", "notify", "remove")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    starts_at REAL NOT NULL,
    container_id TEXT NOT NULL,
    alert TEXT NOT NULL,
    received_at REAL NOT NULL,
    due_at REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    decision TEXT,
    detail TEXT,
    finished_at REAL,
    UNIQUE (fingerprint, starts_at, kind)
);
CREATE INDEX IF NOT EXISTS jobs_pending ON jobs (state, due_at);
CREATE INDEX IF NOT EXISTS jobs_received ON jobs (state, received_at);
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


def _connect(path: Path, synchronous: str) -> sqlite3.Connection:
    db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={synchronous}")
    db.execute("PRAGMA busy_timeout=5000")
    return db


_compact = json.JSONEncoder(separators=(",", ":")).encode  # one encoder, not one per row
_JOB_COLUMNS = "id, kind, alert, received_at, due_at, attempts"


def _job(row: Sequence[Any]) -> Job:
    return Job(
        id=row[0],
        kind=row[1],
        alert=Alert.from_json(json.loads(row[2])),
        received_at=row[3],
        due_at=row[4],
        attempts=row[5],
    )


class Journal:
    """SQLite journal shared by the web threads (intake) and the workers (see the module doc)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._write_lock = threading.Lock()  # orders the two writing connections
        self._read_lock = threading.Lock()
        self._waiting: list[_Batch] = []
        self._waiting_lock = threading.Lock()
        self._intake_db = _connect(self.path, "FULL")
        self._intake_db.executescript(_SCHEMA)
        self._db = _connect(self.path, "NORMAL")  # the workers' writes
        self._reader = _connect(self.path, "NORMAL")

    def close(self) -> None:
        with self._write_lock, self._read_lock:
            for db in (self._intake_db, self._db, self._reader):
                db.close()

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._read_lock:
            return self._reader.execute(sql, args).fetchall()

    def _write(self, sql: str, rows: Iterable[Sequence[Any]]) -> list[int]:
        """Run `sql` for each row in one transaction; the row counts it changed, in order."""
        with self._write_lock:
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
                    _compact(a.to_json()),
                    now,
                    due,
                )
                for a in alerts
            ]
        )
        with self._waiting_lock:
            self._waiting.append(batch)
        with self._write_lock:
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
            "INSERT OR IGNORE INTO jobs (kind, fingerprint, starts_at, container_id, alert, "
            "received_at, due_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
        )
        cur = self._intake_db.cursor()
        try:
            cur.execute("BEGIN IMMEDIATE")
            results = []
            for batch in batches:
                flags = []
                for row in batch.rows:
                    cur.execute(sql, row)
                    flags.append(cur.rowcount == 1)
                results.append(flags)
            cur.execute("COMMIT")
        except Exception as exc:  # noqa: BLE001 - re-raised in every waiting webhook's thread
            if self._intake_db.in_transaction:
                cur.execute("ROLLBACK")
            for batch in batches:
                batch.error = exc
            return
        for batch, flags in zip(batches, results, strict=True):
            batch.result = flags

    def due(self, now: float, *, limit: int = 100, exclude: Iterable[int] = ()) -> list[Job]:
        """Pending jobs whose time has come, oldest first."""
        skip = tuple(exclude)
        marks = ",".join("?" * len(skip))
        where = f"AND id NOT IN ({marks})" if skip else ""
        sql = (
            f"SELECT {_JOB_COLUMNS} FROM jobs "
            f"WHERE state = 'pending' AND due_at <= ? {where} ORDER BY due_at, id LIMIT ?"
        )
        return [_job(r) for r in self._read(sql, (now, *skip, limit))]

    def next_job(
        self, now: float, *, busy_jobs: Iterable[int] = (), busy_containers: Iterable[str] = ()
    ) -> Job | None:
        """The oldest due job that is not in flight and whose container has none in flight."""
        jobs, containers = tuple(busy_jobs), tuple(busy_containers)
        where = ""
        if jobs:
            where += f" AND id NOT IN ({','.join('?' * len(jobs))})"
        if containers:
            where += f" AND container_id NOT IN ({','.join('?' * len(containers))})"
        sql = (
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE state = 'pending' AND due_at <= ?"
            f"{where} ORDER BY due_at, id LIMIT 1"
        )
        rows = self._read(sql, (now, *jobs, *containers))
        return _job(rows[0]) if rows else None

    def finish(self, job_id: int, *, decision: str, detail: str, now: float) -> None:
        self._write(
            "UPDATE jobs SET state = 'done', decision = ?, detail = ?, finished_at = ? "
            "WHERE id = ?",
            [(decision, detail, now, job_id)],
        )

    def retry_later(self, job_id: int, *, error: str, due_at: float) -> None:
        self._write(
            "UPDATE jobs SET attempts = attempts + 1, last_error = ?, due_at = ? WHERE id = ?",
            [(error, due_at, job_id)],
        )

    def stats(self) -> QueueStats:
        [(depth, oldest)] = self._read(
            "SELECT COUNT(*), MIN(received_at) FROM jobs WHERE state = 'pending'"
        )
        return QueueStats(depth=depth, oldest_received_at=oldest)

    def next_due_at(self) -> float | None:
        [(due,)] = self._read("SELECT MIN(due_at) FROM jobs WHERE state = 'pending'")
        return due

    def prune(self, *, finished_before: float) -> int:
        """Forget decisions older than the retention (repeats after that are re-verified)."""
        counts = self._write(
            "DELETE FROM jobs WHERE state = 'done' AND finished_at < ?", [(finished_before,)]
        )
        return counts[0]

    def decisions(self) -> list[dict[str, Any]]:
        """Every row with its state and decision, for inspection (and tests)."""
        names = (
            "id", "kind", "fingerprint", "starts_at", "container_id", "state", "attempts",
            "last_error", "decision", "detail",
        )  # fmt: skip
        rows = self._read(f"SELECT {', '.join(names)} FROM jobs ORDER BY id")
        return [dict(zip(names, row, strict=True)) for row in rows]
