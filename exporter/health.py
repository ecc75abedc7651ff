"""The exporter's own health: error counters that start at 0 and log-once-per-episode warnings."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable

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


class Episode:
    """Logs a failure once when it starts and once when it ends, not on every retry."""

    def __init__(self, logger: logging.Logger, what: str) -> None:
        self._logger, self._what = logger, what
        self._failing = False
        self._lock = threading.Lock()

    @property
    def failing(self) -> bool:
        return self._failing

    def fail(self, reason: object) -> None:
        with self._lock:
            first, self._failing = not self._failing, True
        if first:
            self._logger.warning(
                "%s failing: %s (further errors counted, not logged)", self._what, reason
            )
        else:
            self._logger.debug("%s still failing: %s", self._what, reason)

    def ok(self) -> None:
        with self._lock:
            recovered, self._failing = self._failing, False
        if recovered:
            self._logger.info("%s recovered", self._what)
