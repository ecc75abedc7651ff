"""When each container was last warned, kept on disk so that no idle stop comes unwarned.

Alertmanager, Prometheus or the exporter may restart between a warning and its stop, and
then both alerts can arrive at once; the worker asks this book before an idle stop.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS warned (
    container_id TEXT NOT NULL,
    reason TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (container_id, reason)
);
"""


class WarningBook:
    """The latest warning time per (container, reason); ':memory:' for a throwaway book."""

    def __init__(self, path: str | Path = ":memory:") -> None:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)

    def record(self, container_id: str, reason: str, at: float) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO warned (container_id, reason, at) VALUES (?, ?, ?) "
                "ON CONFLICT (container_id, reason) DO UPDATE SET at = max(at, excluded.at)",
                (container_id, reason, at),
            )

    def last(self, container_id: str, reason: str) -> float | None:
        with self._lock:
            row = self._db.execute(
                "SELECT at FROM warned WHERE container_id = ? AND reason = ?",
                (container_id, reason),
            ).fetchone()
        return row[0] if row else None

    def forget_before(self, at: float) -> int:
        """Drop warnings older than `at` (older than any idle period still running)."""
        with self._lock:
            return self._db.execute("DELETE FROM warned WHERE at < ?", (at,)).rowcount

    def close(self) -> None:
        with self._lock:
            self._db.close()
