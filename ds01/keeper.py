"""Keep `ds01 up`'s parts running the way systemd's Restart= does: one that exits is logged and
started again after a backoff; nothing else is stopped because of it.

Before, the first part to exit ended `ds01 up`, and with it the private dockerd: every
container exited 137 because, say, someone POSTed /-/quit to Prometheus.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .stack import ChildProcess

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backoff:
    """Seconds: the first restart delay, doubling up to `maximum`; a run of `stable_after`
    seconds or more starts the count again."""

    initial: float = 1.0
    maximum: float = 30.0
    stable_after: float = 60.0


def restart_delay(*, exits_in_a_row: int, backoff: Backoff) -> float:
    """How long to wait before the next start after the `exits_in_a_row`-th quick exit."""
    return min(backoff.maximum, backoff.initial * 2 ** max(0, min(exits_in_a_row - 1, 30)))


@dataclass
class _Watch:
    started: float
    exits_in_a_row: int = 0
    restart_at: float | None = None


class Keeper:
    """Call `check()` every second or so: it notices exits and restarts what is due."""

    def __init__(
        self,
        children: Sequence[ChildProcess],
        *,
        backoff: Backoff = Backoff(),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._children = children
        self._backoff = backoff
        self._monotonic = monotonic
        self._watch: dict[int, _Watch] = {}
        self.restarts = 0

    def check(self) -> None:
        now = self._monotonic()
        for child in list(self._children):
            watch = self._watch.setdefault(id(child), _Watch(started=now))
            if child.running():
                if now - watch.started >= self._backoff.stable_after:
                    watch.exits_in_a_row = 0
                continue
            if watch.restart_at is None:
                self._schedule(child, watch, now)
            elif now >= watch.restart_at:
                self._restart(child, watch, now)

    def _schedule(self, child: ChildProcess, watch: _Watch, now: float) -> None:
        ran = now - watch.started
        quick = ran < self._backoff.stable_after
        watch.exits_in_a_row = watch.exits_in_a_row + 1 if quick else 1
        delay = restart_delay(exits_in_a_row=watch.exits_in_a_row, backoff=self._backoff)
        watch.restart_at = now + delay
        code = child.process.returncode if child.process is not None else None
        logger.warning(
            "%s exited (code %s) after %.0fs; restarting in %.1fs (exit %d in a row); log %s",
            child.name, code, ran, delay, watch.exits_in_a_row, child.log_path,
        )  # fmt: skip

    def _restart(self, child: ChildProcess, watch: _Watch, now: float) -> None:
        try:
            child.start()
        except OSError:
            logger.exception("%s could not be started again", child.name)
            watch.restart_at = None  # counts as another quick exit on the next check
            watch.started = now
            return
        watch.started, watch.restart_at = now, None
        self.restarts += 1
        logger.info("%s restarted (pid %s)", child.name, child.pid)
