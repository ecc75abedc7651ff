"""The audit log: one JSON line per decision, appended, fsync'd, mode 0640.

Every record has the same keys (`time, event, container_id, container, user, reason,
fingerprint, decision, detail, dry_run`), so `jq` queries never meet a missing field.
"""

from __future__ import annotations

import json
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ds01.clock import SYSTEM_CLOCK, Clock
from ds01.whole_append import append_whole

MODE = 0o640


class AuditLog:
    """Append-only JSON lines; a record is on disk before `write` returns."""

    def __init__(self, path: str | Path, *, dry_run: bool = False, clock: Clock = SYSTEM_CLOCK):
        self.path = Path(path)
        self.dry_run = dry_run
        self._clock = clock
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, MODE)
        os.fchmod(self._fd, MODE)  # the umask must not widen or narrow it

    def write(
        self,
        *,
        event: str,
        container_id: str,
        container: str,
        user: str,
        reason: str,
        fingerprint: str,
        decision: str,
        detail: str,
        **extra: Any,
    ) -> dict[str, Any]:
        record = {
            "time": datetime.fromtimestamp(self._clock.time(), tz=UTC).isoformat(),
            "event": event,
            "container_id": container_id,
            "container": container,
            "user": user,
            "reason": reason,
            "fingerprint": fingerprint,
            "decision": decision,
            "detail": detail,
            "dry_run": self.dry_run,
            **extra,
        }
        line = (json.dumps(record, sort_keys=False) + "\n").encode()
        with self._lock:
            # A full disk can take part of a line: cut back to the whole ones (as the size was
            # just before) rather than glue the next record to the torn half.
            append_whole(self._fd, line, os.fstat(self._fd).st_size)
            os.fsync(self._fd)
        return record

    def close(self) -> None:
        with self._lock:
            os.close(self._fd)


def read_audit(path: str | Path) -> list[dict[str, Any]]:
    """All records of an audit log (for tests, the bench and operators' scripts)."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]
