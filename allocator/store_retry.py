"""Replaying a transaction that lost a race in a shared store: bounded attempts, full jitter.

Two allocators that decide at once on the same user (quota read on every node) cannot both
commit under SERIALIZABLE; the loser is rolled back and decides again on the new facts.
"""

from __future__ import annotations

import functools
import logging
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

from .store import StoreRetry, StoreUnavailable

logger = logging.getLogger(__name__)

ATTEMPTS = 12
BASE_DELAY = 0.002  # seconds; doubles per attempt up to CAP_DELAY
CAP_DELAY = 0.25

F = TypeVar("F", bound=Callable[..., Any])


def retry_delay(
    attempt: int,
    *,
    base: float = BASE_DELAY,
    cap: float = CAP_DELAY,
    rng: Callable[[], float] = random.random,
) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**attempt)), so racers spread out."""
    return rng() * min(cap, base * (2 ** max(0, attempt)))


def replay_lost_races(method: F) -> F:
    """Run `method` again (up to ATTEMPTS times) when its transaction raised StoreRetry.

    The method must be replayable: its store writes were rolled back and the service restores
    its queue at the failed transaction (Allocator._transaction), before the replay.
    """

    @functools.wraps(method)
    def replayed(self: Any, *args: Any, **kwargs: Any) -> Any:
        for attempt in range(1, ATTEMPTS + 1):
            try:
                return method(self, *args, **kwargs)
            except StoreRetry as exc:
                self.metrics.count_error("store_race")
                if attempt == ATTEMPTS:
                    logger.warning("%s lost %d races in a row: %s", method.__name__, attempt, exc)
                    raise StoreUnavailable(
                        f"the allocation store is too busy ({attempt} conflicting attempts); "
                        "nothing was changed, retry in a moment"
                    ) from exc
                logger.debug("%s lost a race (attempt %d): %s", method.__name__, attempt, exc)
                time.sleep(retry_delay(attempt))
        raise AssertionError("unreachable")

    return cast(F, replayed)
