"""Rendered /metrics bodies: the snapshot part once per snapshot, the health part per scrape.

The collector thread renders each published snapshot (`prepare`) through the incremental
renderer of `textformat.py`, so a scrape only joins ready bytes and appends the small, live
health part. Both formats and both encodings share the same rendered sample blocks.
"""

from __future__ import annotations

import gzip
import logging
import threading
from dataclasses import dataclass, field

from prometheus_client.exposition import choose_encoder, gzip_accepted
from prometheus_client.registry import Collector

from .snapshot import Snapshot
from .textformat import GZIP_LEVEL, OPENMETRICS, TEXT, Rendered, SnapshotText

logger = logging.getLogger(__name__)

# What Prometheus 2.x asks for (tests and benchmarks use it too).
DEFAULT_ACCEPT = "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3"


@dataclass
class _Prepared:
    """One snapshot's rendered families, with the joined bodies made on first demand."""

    snapshot: Snapshot | None
    rendered: Rendered
    bodies: dict[tuple[str, bool], bytes] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def matches(self, snapshot: Snapshot | None) -> bool:
        """Same series: the very snapshot, or one that only re-stamped its duration."""
        mine = self.snapshot
        if mine is snapshot:
            return True
        return (
            mine is not None
            and snapshot is not None
            and mine.devices is snapshot.devices
            and mine.containers is snapshot.containers
        )

    def body(self, fmt: str, zipped: bool) -> bytes:
        with self.lock:
            found = self.bodies.get((fmt, zipped))
            if found is None:
                found = self.rendered.gzipped(fmt) if zipped else self.rendered.plain(fmt)
                self.bodies[(fmt, zipped)] = found
            return found


@dataclass(frozen=True)
class Body:
    """A /metrics answer in parts (the shared pre-rendered head, the fresh health tail): served
    as they are, so a scrape never copies a body of hundreds of kilobytes into a new one."""

    parts: tuple[bytes, ...]
    content_type: str
    gzipped: bool

    @property
    def data(self) -> bytes:
        return b"".join(self.parts)

    @property
    def length(self) -> int:
        return sum(len(part) for part in self.parts)


class Exposition:
    """Serves /metrics bodies; `prepare()` runs in the collector thread after each publish."""

    def __init__(self, health: Collector) -> None:
        self._health = health
        self._text = SnapshotText()
        self._current = _Prepared(None, self._text.render(None))
        self._previous = self._current  # a scrape that read the snapshot just before a publish

    def prepare(self, snapshot: Snapshot) -> None:
        prepared = _Prepared(snapshot, self._text.render(snapshot))
        self._previous, self._current = self._current, prepared

    def render(
        self, snapshot: Snapshot | None, accept: str | None, accept_encoding: str | None
    ) -> Body:
        prepared = self._current
        if not prepared.matches(snapshot) and self._previous.matches(snapshot):
            prepared = self._previous
        if not prepared.matches(snapshot):  # not prepared (yet): render on demand
            stale = prepared.snapshot
            prepared = _Prepared(snapshot, self._text.render(snapshot))
            if stale is None or (snapshot is not None and snapshot.timestamp > stale.timestamp):
                self._current = prepared  # never replace a newer prepared snapshot
        encoder, content_type = choose_encoder(accept or "")
        fmt = OPENMETRICS if content_type.startswith("application/openmetrics-text") else TEXT
        zipped = gzip_accepted(accept_encoding or "")
        head = prepared.body(fmt, zipped)
        tail = encoder(self._health)  # always fresh: error counters move between snapshots
        if zipped:
            # Concatenated gzip members are one valid gzip stream (RFC 1952, section 2.2).
            tail = gzip.compress(tail, compresslevel=GZIP_LEVEL)
        return Body((head, tail), content_type, zipped)
