"""The GPU inventory as the allocator sees it: a cached backend reading, process owners, and
the devices that running containers use (labelled or not), which are never granted.
"""

from __future__ import annotations

import logging
import os
import pwd
import threading
import time
from collections.abc import Callable, Iterable

from ds01.gpu import GpuBackend, GpuReading

from .lifecycle import ContainerEvent, ContainerView

logger = logging.getLogger(__name__)


def process_owner(pid: int) -> str | None:
    """The user name owning a host PID (None when the process is gone)."""
    try:
        uid = os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


class CachedInventory:
    """The GPU backend's last reading, refreshed at most every `refresh` seconds."""

    def __init__(
        self,
        backend: GpuBackend,
        refresh: float = 1.0,
        *,
        on_error: Callable[[], None] = lambda: None,
    ) -> None:
        self.backend, self.refresh = backend, refresh
        self._on_error = on_error
        self._reading: GpuReading | None = None
        self._read_at = 0.0
        self._lock = threading.Lock()
        self.errors = 0

    def current(self) -> GpuReading:
        with self._lock:
            now = time.monotonic()
            if self._reading is None or now - self._read_at >= self.refresh:
                try:
                    self._reading = self.backend.read()
                    if self._reading.errors:  # devices it could not sample, counted as the
                        self.errors += 1  # exporter counts them
                        self._on_error()
                except Exception:
                    self.errors += 1
                    self._on_error()
                    logger.exception("reading the GPU inventory failed")
                    if self._reading is None:
                        self._reading = GpuReading(self.backend.devices())
                self._read_at = now
            return self._reading


class RunningContainers:
    """Running GPU containers known from Docker, and why each foreign one was not adopted.

    Not locked itself: the allocator reads and changes it under its own lock.
    """

    def __init__(self) -> None:
        self._views: dict[str, ContainerView] = {}
        self._refusals: dict[str, str] = {}  # container id -> the last reason it was refused

    def replace_all(self, views: Iterable[ContainerView]) -> None:
        """After a reconcile: exactly these run (refusals of those still running are kept)."""
        self._views = {v.container_id: v for v in views if v.running and v.gpu_devices}
        self._refusals = {c: r for c, r in self._refusals.items() if c in self._views}

    def follow(self, event: ContainerEvent) -> None:
        """A start adds the container (a fresh decision); die and destroy remove it."""
        view = event.container
        if event.action == "start" and view.gpu_devices:
            self._views[view.container_id] = view
            self._refusals.pop(view.container_id, None)
        elif event.action in ("start", "die", "destroy"):
            self._views.pop(view.container_id, None)
            self._refusals.pop(view.container_id, None)

    def views(self) -> list[ContainerView]:
        return list(self._views.values())

    def devices(self) -> dict[str, ContainerView]:
        """Device UUID -> a running container that uses it."""
        return {u: v for v in self._views.values() for u in v.gpu_devices}

    def refused(self, container_id: str, reason: str) -> tuple[bool, bool]:
        """Record a refusal; returns (first for this start, reason changed)."""
        before = self._refusals.get(container_id)
        self._refusals[container_id] = reason
        return before is None, before != reason

    def adopted(self, container_id: str) -> None:
        self._refusals.pop(container_id, None)
