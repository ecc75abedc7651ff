"""The one clock: every service takes a `Clock` so tests can freeze or advance time."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime


class Clock:
    """Wall-clock time in Unix seconds and as an aware datetime."""

    def time(self) -> float:
        return time.time()

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.time(), tz=UTC)


@dataclass
class FrozenClock(Clock):
    """A clock that only moves when told to, for tests."""

    current: float = field(default=1_700_000_000.0)

    def time(self) -> float:
        return self.current

    def advance(self, seconds: float) -> None:
        self.current += seconds


SYSTEM_CLOCK = Clock()
