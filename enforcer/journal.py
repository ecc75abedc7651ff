"""The durable queue: every accepted alert is a SQLite row before the webhook is acknowledged.

`kind` is the endpoint's action (`stop` from /alerts, `notify` from /notify) or a follow-up
(`remove`). A repeat of an alert is a duplicate only while a row for the same (kind,
fingerprint, container, reason) is still open — `pending`, or `watching` (a stopped container
watched for a quick restart) — or, for a warning, once it was delivered for that startsAt. A
skip or a failure is never final: the next repeat is verified afresh, and no startsAt a
sender chose can make a later alert a duplicate. Rows stay open until the worker records a
decision, so a crash between the acknowledgement and the action only delays the action. The
file and its -wal/-shm are 0600 (every user's alerts).

One writer thread owns the writing connection. Webhooks and workers hand it their writes and
wait; it commits everything that arrived meanwhile in one transaction (group commit: one fsync
for a whole burst). A transaction holding new alerts commits with synchronous=FULL (an
acknowledged alert survives a SIGKILL and even a power cut); one holding only the workers'
bookkeeping commits with NORMAL (it survives a SIGKILL; a decision lost to a power cut is
re-verified after the restart, and skipped). Nobody holds a lock across SQLite calls, so a
webhook never queues behind a worker's transaction. Reads use their own connection (WAL
readers never wait for writers); checkpoints run outside the writer (autocheckpoint off), when
the workers call checkpoint().
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ds01.statefiles import private_database
from ds01.wal_checkpoint import WalCheckpointer

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


class _Write:
    """One caller's write, waiting for the next group commit; `run` gets the open cursor.

    The caller blocks on a lock taken at creation, released once by the writer: the cheapest
    wake-up there is (an Event builds a Condition, a deque and a waiter lock per write)."""

    __slots__ = ("run", "durable", "result", "error", "_done")

    def __init__(self, run: Callable[[sqlite3.Cursor], Any], durable: bool) -> None:
        self.run = run
        self.durable = durable  # must survive a power cut once answered (new alerts)
        self.result: Any = None
        self.error: BaseException | None = None
        self._done = threading.Lock()
        self._done.acquire()

    def wait(self) -> None:
        self._done.acquire()

    def answer(self) -> None:
        """The writer's reply: called exactly once per write."""
        self._done.release()


@dataclass(frozen=True)
class QueueStats:
    depth: int
    oldest_received_at: float | None  # None when nothing is pending


def _connect(path: Path, synchronous: str) -> sqlite3.Connection:
    db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={synchronous}")
    db.execute("PRAGMA busy_timeout=5000")
    # No checkpoint inside a commit: it would run under the write lock, with its fsyncs, and
    # hold every webhook behind it. The workers call checkpoint() outside any lock instead.
    db.execute("PRAGMA wal_autocheckpoint=0")
    return db


_INSERT = (
    "INSERT INTO jobs (kind, fingerprint, starts_at, container_id, reason, alert, "
    "received_at, due_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_compact = json.JSONEncoder(separators=(",", ":")).encode  # one encoder, not one per row
_JOB_COLUMNS = "id, kind, alert, received_at, due_at, attempts, state, watch_started"
_OPEN = "state IN ('pending', 'watching')"


def _job(row: Sequence[Any]) -> Job:
    return Job(
        id=row[0],
        kind=row[1],
        alert=Alert.from_json(json.loads(row[2])),
        received_at=row[3],
        due_at=row[4],
        attempts=row[5],
        state=row[6],
        watch_started=row[7],
    )


def _insert(
    cur: sqlite3.Cursor, kind: str, alerts: Sequence[Alert], now: float, due: float
) -> list[bool]:
    """Insert each alert unless an open row (or a delivered warning) already answers for it; a
    repeat within `alerts`, or already written in this transaction, is found the same way.
    Only a new row's alert is encoded: a repeat costs its duplicate check alone."""
    flags = []
    for a in alerts:
        key = (a.fingerprint, kind, a.container_id, a.reason, a.starts_at)
        if cur.execute(_DUPLICATE, key).fetchone() is not None:
            flags.append(False)
            continue
        text = _compact(a.to_json())
        row = (kind, a.fingerprint, a.starts_at, a.container_id, a.reason, text, now, due)
        cur.execute(_INSERT, row)
        flags.append(True)
    return flags


class Journal:
    """SQLite journal shared by the web threads (intake) and the workers (see the module doc)."""

    def __init__(self, path: str | Path) -> None:
        self.path = private_database(path)  # 0600: every user's alerts
        self._db = _connect(self.path, "FULL")  # used by the writer thread only
        self._sync = "FULL"
        self._migrate()
        self._reader = _connect(self.path, "NORMAL")
        self._read_lock = threading.Lock()
        self._checkpointer = WalCheckpointer(self.path)
        self._pending: list[_Write] = []
        self._pending_cond = threading.Condition()
        self._closing = False
        self._writer = threading.Thread(target=self._write_loop, name="journal-writer", daemon=True)
        self._writer.start()

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
        with self._pending_cond:
            self._closing = True
            self._pending_cond.notify()
        self._writer.join(30)
        self._checkpointer.close()
        with self._read_lock:
            for db in (self._db, self._reader):
                db.close()

    def checkpoint(self) -> None:
        """Copy the write-ahead log into the database (PASSIVE: never blocks a writer)."""
        self._checkpointer.run()

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._read_lock:
            return self._reader.execute(sql, args).fetchall()

    # --- the writer -----------------------------------------------------------------------

    def _submit(self, run: Callable[[sqlite3.Cursor], Any], *, durable: bool) -> Any:
        """Hand a write to the writer thread; return its result once it is committed."""
        write = _Write(run, durable)
        with self._pending_cond:
            if self._closing:
                raise sqlite3.ProgrammingError("the journal is closed")
            self._pending.append(write)
            self._pending_cond.notify()
        write.wait()
        if write.error is not None:
            raise write.error
        return write.result

    def _write_loop(self) -> None:
        while True:
            with self._pending_cond:
                while not self._pending and not self._closing:
                    self._pending_cond.wait()
                writes, self._pending = self._pending, []
            if not writes:
                return  # closing, and nothing left to write
            self._commit(writes)

    def _commit(self, writes: list[_Write]) -> None:
        """All `writes` in one transaction; a failing one is answered alone, the rest retried."""
        cur = self._db.cursor()
        sync = "FULL" if any(w.durable for w in writes) else "NORMAL"
        if sync != self._sync:
            cur.execute(f"PRAGMA synchronous={sync}")  # outside a transaction, as it must be
            self._sync = sync
        for n, write in enumerate(writes):
            try:
                if n == 0:
                    cur.execute("BEGIN IMMEDIATE")
                write.result = write.run(cur)
            except Exception as exc:  # noqa: BLE001 - handed to the caller's thread
                if self._db.in_transaction:
                    cur.execute("ROLLBACK")
                write.error = exc
                write.answer()
                if n:  # the ones before it were rolled back with it: run them again
                    self._commit(writes[:n])
                if writes[n + 1 :]:
                    self._commit(writes[n + 1 :])
                return
        try:
            cur.execute("COMMIT")
        except Exception as exc:  # noqa: BLE001 - nothing of this group was written
            if self._db.in_transaction:
                cur.execute("ROLLBACK")
            for write in writes:
                write.result, write.error = None, exc
        for write in writes:
            write.answer()

    def _write(self, sql: str, args: Sequence[Any]) -> int:
        """One statement through the writer; the number of rows it changed."""
        return self._submit(lambda cur: cur.execute(sql, args).rowcount, durable=False)

    # --- intake ---------------------------------------------------------------------------

    def enqueue(
        self, kind: str, alerts: Sequence[Alert], *, now: float, due_at: float | None = None
    ) -> list[bool]:
        """Journal the alerts durably; True for each that was new, False for a repeat.

        The rows are committed (fsync'd) before this returns, together with whatever else was
        waiting for the writer: a burst of concurrent posts costs a few commits, not one each.
        """
        if kind not in KINDS:
            raise ValueError(f"unknown job kind {kind!r}")
        if not alerts:
            return []
        due = now if due_at is None else due_at
        return self._submit(lambda cur: _insert(cur, kind, alerts, now, due), durable=True)

    def due(self, now: float, *, limit: int = 100, exclude: Iterable[int] = ()) -> list[Job]:
        """Open jobs (pending or watching) whose time has come, oldest first."""
        skip = tuple(exclude)
        marks = ",".join("?" * len(skip))
        where = f"AND id NOT IN ({marks})" if skip else ""
        sql = (
            f"SELECT {_JOB_COLUMNS} FROM jobs "
            f"WHERE {_OPEN} AND due_at <= ? {where} ORDER BY due_at, id LIMIT ?"
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
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE {_OPEN} AND due_at <= ?"
            f"{where} ORDER BY due_at, id LIMIT 1"
        )
        rows = self._read(sql, (now, *jobs, *containers))
        return _job(rows[0]) if rows else None

    def finish(self, job_id: int, *, decision: str, detail: str, now: float) -> None:
        self._write(
            "UPDATE jobs SET state = 'done', decision = ?, detail = ?, finished_at = ? "
            "WHERE id = ?",
            (decision, detail, now, job_id),
        )

    def watch(self, job_id: int, *, decision: str, detail: str, now: float, due_at: float) -> None:
        """The action is done (recorded as `decision`); look again at `due_at` for a restart."""
        self._write(
            "UPDATE jobs SET state = 'watching', decision = ?, detail = ?, finished_at = ?, "
            "due_at = ?, watch_started = ? WHERE id = ?",
            (decision, detail, now, due_at, now, job_id),
        )

    def reschedule(self, job_id: int, *, due_at: float) -> None:
        """Look at an open row again at `due_at` (no attempt counted: nothing failed)."""
        self._write("UPDATE jobs SET due_at = ? WHERE id = ?", (due_at, job_id))

    def end_watch(self, job_id: int, *, note: str, now: float) -> None:
        """Nothing more to watch: close the row, keeping the decision it was watched for."""
        self._write(
            "UPDATE jobs SET state = 'done', last_error = ?, finished_at = ? WHERE id = ?",
            (note, now, job_id),
        )

    def retry_later(self, job_id: int, *, error: str, due_at: float) -> None:
        self._write(
            "UPDATE jobs SET attempts = attempts + 1, last_error = ?, due_at = ? WHERE id = ?",
            (error, due_at, job_id),
        )

    def stats(self) -> QueueStats:
        [(depth, oldest)] = self._read(
            "SELECT COUNT(*), MIN(received_at) FROM jobs WHERE state = 'pending'"
        )
        return QueueStats(depth=depth, oldest_received_at=oldest)

    def next_due_at(self) -> float | None:
        [(due,)] = self._read(f"SELECT MIN(due_at) FROM jobs WHERE {_OPEN}")
        return due

    def prune(self, *, finished_before: float) -> int:
        """Forget decisions older than the retention."""
        return self._write(
            "DELETE FROM jobs WHERE state = 'done' AND finished_at < ?", (finished_before,)
        )

    def decisions(self) -> list[dict[str, Any]]:
        """Every row with its state and decision, for inspection (and tests)."""
        names = (
            "id", "kind", "fingerprint", "starts_at", "container_id", "state", "attempts",
            "last_error", "decision", "detail",
        )  # fmt: skip
        rows = self._read(f"SELECT {', '.join(names)} FROM jobs ORDER BY id")
        return [dict(zip(names, row, strict=True)) for row in rows]
