"""One log line per event, key=value, to stderr: greppable by a person, parseable by a tool."""

from __future__ import annotations

import logging
import sys

FORMAT = "time=%(asctime)s level=%(levelname)s logger=%(name)s msg=%(message)s"


class _CurrentStderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at emit time (pytest swaps it between tests)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        return None


def setup_logging(level: str = "INFO") -> None:
    """Configure the `ds01` loggers only, never the root logger's other users."""
    handler = _CurrentStderrHandler()
    handler.setFormatter(logging.Formatter(FORMAT, datefmt="%Y-%m-%dT%H:%M:%S%z"))
    for name in ("ds01", "exporter", "enforcer", "allocator"):
        log = logging.getLogger(name)
        log.handlers[:] = [handler]
        log.setLevel(level.upper())
        log.propagate = False
