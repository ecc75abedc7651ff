"""Copying a WAL database's log into the database outside its writer's locks.

A commit that reaches SQLite's autocheckpoint threshold copies the log and pays two fsyncs
while its writer holds every lock; the allocator's store and the enforcer's journal turn that
off (or nearly) and checkpoint from a connection of their own, when their housekeeping says.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path


class WalCheckpointer:
    """PASSIVE checkpoints (never blocking a writer) on a connection of their own; one pass at
    a time, a second caller returns at once."""

    def __init__(self, path: str | Path) -> None:
        self._db = sqlite3.connect(
            str(path), isolation_level=None, check_same_thread=False, timeout=10.0
        )
        self._lock = threading.Lock()

    def run(self) -> bool:
        """One checkpoint; False when another is under way (it covers the same log)."""
        if not self._lock.acquire(blocking=False):
            return False
        try:
            self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
            return True
        finally:
            self._lock.release()

    def close(self) -> None:
        """Waits for a checkpoint under way, then closes the connection."""
        with self._lock:
            self._db.close()
