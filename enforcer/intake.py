"""Acknowledge first: a count of webhooks in flight that the workers give way to."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Intake:
    """Webhooks being received right now: workers hold back while any is, so acks come first."""

    def __init__(self) -> None:
        self._count = 0
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
                if self._count == 0:
                    self._cond.notify_all()

    def wait_quiet(self, timeout: float) -> None:
        """Wait until no webhook is in flight, but never longer than `timeout` seconds."""
        with self._cond:
            self._cond.wait_for(lambda: self._count == 0, timeout)
