"""One way for tests to wait: poll until something is true, and say what never happened."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def eventually(check: Callable[[], T], timeout: float, what: str, interval: float = 0.1) -> T:
    """Poll `check` until it returns something truthy and return that.

    `check` runs at least once, and once more after the deadline; the timeout only bounds a
    hang (behaviour, not speed, is what a test asserts). Failing, the AssertionError names
    `what`, the timeout and the last value `check` returned.
    """
    deadline = time.monotonic() + timeout
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"timed out after {timeout:g}s waiting for {what} (last: {last!r})"
            )
        time.sleep(interval)
