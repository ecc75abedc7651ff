"""The GPU inventory as the allocator sees it: a cached backend reading and process owners."""

from __future__ import annotations

import logging
import os
import pwd
import threading
import time
from collections.abc import Callable

from ds01.gpu import GpuBackend, GpuReading

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
