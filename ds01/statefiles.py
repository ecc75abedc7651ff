"""State files only their service reads: every user's alerts and allocations are in them.

SQLite creates its -wal and -shm files with the database file's mode, so making the database
0600 before the first connection (and mending older ones) keeps all three private.
"""

from __future__ import annotations

import os
from pathlib import Path

PRIVATE = 0o600


def private_database(path: str | os.PathLike[str], mode: int = PRIVATE) -> Path:
    """Create `path` with `mode` if missing, and set `mode` on it and its -wal/-shm files."""
    where = Path(path)
    where.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(where, os.O_WRONLY | os.O_CREAT, mode))
    for file in (where, where.with_name(where.name + "-wal"), where.with_name(where.name + "-shm")):
        try:
            os.chmod(file, mode)
        except FileNotFoundError:
            continue
    return where
