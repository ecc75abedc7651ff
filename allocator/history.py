"""What happened to a user's containers and requests, for that user: the `container history`
and `container ls` source.

Two append-only JSON-lines files feed it: the enforcer's audit log (warnings, stops, removals;
root-only) and the allocator's own history (grants, waits). The allocator serves the merge
through its API, filtered by the caller's identity, so nobody needs to read the root-only
files. Records share the audit log's keys; `select_history` is the pure filter.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ds01.whole_append import append_whole

logger = logging.getLogger(__name__)

MODE = 0o640
TAIL_BYTES = 8 * 1024 * 1024  # read at most this much of each file's end per request
# Enforcer decisions a user is told about (skips and dry runs are operators' business).
USER_DECISIONS = {"stopped": "stop", "notified": "warning", "removed": "removed"}
ALLOCATOR_EVENTS = ("grant", "wait")
KINDS = ("stop", "warning", "removed", "grant", "wait")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat()


def record_time(record: Mapping[str, Any]) -> float | None:
    try:
        return datetime.fromisoformat(str(record["time"])).timestamp()
    except (KeyError, ValueError):
        return None


class HistoryLog:
    """The allocator's own events; `path=None` keeps nothing (tests, benchmarks).

    Lines gather in memory and go out in one append per `flush()`: the ticker flushes every
    tick, the history API before it reads, `close()` at the end. A grant pays no system call
    of its own for its line, and a crash loses at most a tick of lines (the decision log, not
    this file, keeps the allocations)."""

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self.path = Path(path) if path else None
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._lines: list[bytes] = []  # written, not yet flushed
        self._size = 0
        self.errors = 0
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, MODE)
            os.fchmod(self._fd, MODE)
            self._size = os.fstat(self._fd).st_size  # whole lines only: a failed flush is cut

    def write(
        self,
        *,
        at: float,
        event: str,
        user: str,
        decision: str,
        detail: str,
        container: str = "",
        container_id: str = "",
        reason: str = "",
    ) -> None:
        """Add one record (on disk at the next flush)."""
        if self._fd is None:
            return
        record = {
            "time": _iso(at),
            "event": event,
            "container_id": container_id,
            "container": container,
            "user": user,
            "reason": reason,
            "fingerprint": "",
            "decision": decision,
            "detail": detail,
            "dry_run": False,
        }
        line = (json.dumps(record) + "\n").encode()
        with self._lock:
            self._lines.append(line)

    def flush(self) -> None:
        """Append the gathered lines; a full disk costs them (counted), never a grant."""
        with self._lock:
            if self._fd is None or not self._lines:
                return
            data, lines = b"".join(self._lines), len(self._lines)
            self._lines.clear()
            try:
                append_whole(self._fd, data, self._size)
            except OSError:
                self.errors += lines
                logger.warning("%d history lines not written: %s", lines, self.path, exc_info=True)
                return
            self._size += len(data)

    def close(self) -> None:
        self.flush()
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def read_tail(
    path: str | os.PathLike[str] | None,
    max_bytes: int = TAIL_BYTES,
    *,
    mentioning: str | None = None,
) -> list[dict]:
    """The records in the last `max_bytes` of a JSON-lines file; [] when it does not exist.

    `mentioning`: only lines holding this string JSON-encoded are parsed (a cheap pre-filter
    for one user's records; `select_history` still checks the field).
    """
    needle = json.dumps(mentioning).encode() if mentioning else b""
    if not path:
        return []
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - max_bytes))
            data = handle.read()
    except FileNotFoundError:
        return []
    lines = data.split(b"\n")
    if size > max_bytes:
        lines = lines[1:]  # the first line is cut in the middle
    records = []
    for line in lines:
        if needle and needle not in line:
            continue
        try:
            record = json.loads(line) if line.strip() else None
        except ValueError:
            continue  # a torn last line while the writer appends
        if isinstance(record, dict):
            records.append(record)
    return records


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and value == value:
        return float(value)
    return None


def user_kind(record: Mapping[str, Any]) -> str | None:
    """What the user sees a record as (stop, warning, removed, grant, wait), None: not shown."""
    event = record.get("event")
    if event in ALLOCATOR_EVENTS:
        return str(event)
    if record.get("dry_run"):
        return None
    return USER_DECISIONS.get(str(record.get("decision", "")))


def select_history(
    records: Iterable[Mapping[str, Any]],
    *,
    user: str,
    since: float | None = None,
    container_id: str | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """The user's own records (by the door-stamped `user`), oldest first, the newest `limit`."""
    chosen = []
    for record in records:
        kind = user_kind(record)
        at = record_time(record)
        if kind is None or at is None or record.get("user") != user:
            continue
        if since is not None and at < since:
            continue
        if container_id and not str(record.get("container_id", "")).startswith(container_id):
            continue
        chosen.append(
            {
                "time": at,
                "kind": kind,
                "container": record.get("container", ""),
                "container_id": record.get("container_id", ""),
                "reason": record.get("reason", ""),
                "decision": record.get("decision", ""),
                "detail": record.get("detail", ""),
                "summary": record.get("summary", ""),
                "deadline": _number(record.get("deadline")),
                "limit_seconds": _number(record.get("limit_seconds")),
            }
        )
    chosen.sort(key=lambda r: r["time"])
    return chosen[-limit:] if limit else chosen
