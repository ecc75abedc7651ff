"""The exporter's own health: error counters that start at 0 and log-once-per-episode warnings."""

from __future__ import annotations

import threading
from collections.abc import Iterable

from ds01.episode import Episode

__all__ = ["ERROR_SOURCES", "Episode", "ErrorCounters"]

ERROR_SOURCES = ("docker", "gpu", "keepalive", "state")


class ErrorCounters:
    """Monotonic per-source error counts, shared by the collector threads and the scrape."""

    def __init__(self, sources: Iterable[str] = ERROR_SOURCES) -> None:
        self._lock = threading.Lock()
        self._counts = {source: 0 for source in sources}

    def add(self, source: str, count: int = 1) -> None:
        if count <= 0:
            return
        with self._lock:
            self._counts[source] = self._counts.get(source, 0) + count

    def values(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)
