"""Follow the Docker events stream and survive: subscribe, catch up, apply, and on any failure
count it, log it once per outage, wait, and start over.

One loop for every service that follows Docker (the exporter's inventory, the allocator's
lifecycle). Subscribing before catching up means no event falls between a listing and the
stream; a service started while Docker is down simply keeps retrying until Docker answers.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .episode import Episode

logger = logging.getLogger(__name__)


class EventFollower:
    """A background thread around `subscribe` -> `catch_up` -> `apply` for each event."""

    def __init__(
        self,
        *,
        name: str,
        subscribe: Callable[[], Iterable[Mapping[str, Any]]],
        catch_up: Callable[[], object],
        apply: Callable[[Mapping[str, Any]], object],
        retry: float,
        on_failure: Callable[[object], None] = lambda _reason: None,
        log: logging.Logger = logger,
    ) -> None:
        self._subscribe, self._catch_up, self._apply = subscribe, catch_up, apply
        self._retry = retry
        self._on_failure = on_failure
        self._episode = Episode(log, f"{name}: docker events stream")
        self._stop = threading.Event()
        self._stream: Any = None
        self._connected = False
        self._caught_up = threading.Event()  # set after each successful catch-up (tests wait)
        self._thread = threading.Thread(target=self._run, name=f"{name}-events", daemon=True)

    @property
    def connected(self) -> bool:
        """Subscribed and caught up: the picture follows Docker now."""
        return self._connected

    def wait_connected(self, timeout: float) -> bool:
        return self._caught_up.wait(timeout)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._close_stream()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._follow()
                reason: object = "events stream ended"
            except Exception as exc:  # noqa: BLE001 - any Docker/transport failure: start over
                reason = exc
            self._connected = False
            self._caught_up.clear()
            self._close_stream()
            if self._stop.is_set():
                break
            self._on_failure(reason)
            self._episode.fail(reason)
            self._stop.wait(self._retry)

    def _follow(self) -> None:
        self._stream = self._subscribe()
        self._catch_up()
        self._connected = True
        self._caught_up.set()
        self._episode.ok()
        for event in self._stream:
            if self._stop.is_set():
                return
            self._apply(event)

    def _close_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.close()
            except Exception:
                logger.debug("closing the events stream failed", exc_info=True)
