"""Log a failing dependency once when it starts failing and once when it recovers."""

from __future__ import annotations

import logging
import threading


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
