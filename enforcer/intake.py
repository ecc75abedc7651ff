"""Acknowledge first: a count of webhooks in flight that the workers give way to."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

SETTLE = 0.05  # seconds without a webhook before workers resume: a burst's gaps do not count


class Intake:
    """Webhooks being received right now: workers hold back while any is (and until the intake
    has been quiet for `settle` seconds), so acks come first — but never longer than asked."""

    def __init__(
        self, *, settle: float = SETTLE, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self._count = 0
        self._last_done = float("-inf")
        self._settle = settle
        self._monotonic = monotonic
        self._cond = threading.Condition()

    @contextmanager
    def receiving(self) -> Iterator[None]:
        with self._cond:
            self._count += 1
        try:
            yield
        finally:
            with self._cond:
                self._count -= 1
                self._last_done = self._monotonic()
                if self._count == 0:
                    self._cond.notify_all()

    def wait_quiet(self, timeout: float) -> None:
        """Wait until no webhook is in flight and none ended in the last `settle` seconds, but
        never longer than `timeout` seconds."""
        deadline = self._monotonic() + timeout
        with self._cond:
            while True:
                now = self._monotonic()
                if now >= deadline:
                    return
                if self._count == 0:
                    quiet_for = now - self._last_done
                    if quiet_for >= self._settle:
                        return
                    self._cond.wait(min(self._settle - quiet_for, deadline - now))
                else:
                    self._cond.wait(deadline - now)
