"""Rendered /metrics bodies: the snapshot part once per snapshot, the health part per scrape.

Hundreds of containers make a body of hundreds of kilobytes; rendering it on every scrape would
cost tens of milliseconds. The collector thread renders it once per published snapshot (in the
formats Prometheus asks for), and a scrape only appends the small, live health part.
"""

from __future__ import annotations

import gzip
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client.exposition import choose_encoder, gzip_accepted
from prometheus_client.registry import Collector

from .metrics import SnapshotMetrics
from .snapshot import Snapshot

logger = logging.getLogger(__name__)

EOF_LINE = b"# EOF\n"
# Pre-rendered before anyone asks: what Prometheus 2.x asks for, gzipped.
DEFAULT_ACCEPT = "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3"
MAX_FORMATS = 4  # formats kept pre-rendered: the ones scrapers asked for most recently
GZIP_LEVEL = 1  # ~4x smaller at a fraction of level 6's cost


@dataclass
class _Rendered:
    """One snapshot's bodies by content type (plain and gzip), filled on demand."""

    snapshot: Snapshot | None
    plain: dict[str, bytes] = field(default_factory=dict)
    gzipped: dict[str, bytes] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def body(self, content_type: str, encoder: Callable[[Collector], bytes], zipped: bool) -> bytes:
        with self.lock:
            text = self.plain.get(content_type)
            if text is None:
                text = encoder(SnapshotMetrics(lambda: self.snapshot))
                text = text.removesuffix(EOF_LINE)  # the health part ends the body
                self.plain[content_type] = text
            if not zipped:
                return text
            packed = self.gzipped.get(content_type)
            if packed is None:
                packed = gzip.compress(text, compresslevel=GZIP_LEVEL)
                self.gzipped[content_type] = packed
            return packed


@dataclass(frozen=True)
class Body:
    data: bytes
    content_type: str
    gzipped: bool


class Exposition:
    """Serves /metrics bodies; `prepare()` runs in the collector thread after each publish.

    It pre-renders the formats scrapers have asked for (content type and gzip or not), so a
    scrape of a new snapshot finds its body ready.
    """

    def __init__(self, health: Collector) -> None:
        self._health = health
        self._current = _Rendered(None)
        encoder, content_type = choose_encoder(DEFAULT_ACCEPT)
        self._wanted: dict[tuple[str, bool], Callable[[Collector], bytes]] = {
            (content_type, True): encoder
        }
        self._lock = threading.Lock()

    def prepare(self, snapshot: Snapshot) -> None:
        rendered = _Rendered(snapshot)
        with self._lock:
            wanted = list(self._wanted.items())
        for (content_type, zipped), encoder in wanted:
            rendered.body(content_type, encoder, zipped)
        self._current = rendered

    def _remember(self, key: tuple[str, bool], encoder: Callable[[Collector], bytes]) -> None:
        with self._lock:
            self._wanted.pop(key, None)
            self._wanted[key] = encoder  # most recent last
            while len(self._wanted) > MAX_FORMATS:
                del self._wanted[next(iter(self._wanted))]

    def render(
        self, snapshot: Snapshot | None, accept: str | None, accept_encoding: str | None
    ) -> Body:
        rendered = self._current
        if rendered.snapshot is not snapshot:  # not prepared (yet): render on demand
            stale = rendered.snapshot
            rendered = _Rendered(snapshot)
            if stale is None or (snapshot is not None and snapshot.timestamp > stale.timestamp):
                self._current = rendered  # never replace a newer prepared snapshot
        encoder, content_type = choose_encoder(accept or "")
        zipped = gzip_accepted(accept_encoding or "")
        self._remember((content_type, zipped), encoder)
        head = rendered.body(content_type, encoder, zipped)
        tail = encoder(self._health)  # always fresh: error counters move between snapshots
        if zipped:
            # Concatenated gzip members are one valid gzip stream (RFC 1952, section 2.2).
            return Body(head + gzip.compress(tail, compresslevel=GZIP_LEVEL), content_type, True)
        return Body(head + tail, content_type, False)
