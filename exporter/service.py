"""Wires the exporter together: Docker watcher, collector, metrics registry and HTTP app."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import Flask
from prometheus_client import CollectorRegistry

from ds01 import __version__
from ds01.clock import SYSTEM_CLOCK, Clock
from ds01.gpu import GpuBackend
from ds01.policy import Policy

from .clocks import ClockBook, ClockStateError, ClockStore
from .collector import Collector
from .exposition import Body, Exposition
from .health import ErrorCounters
from .inventory import DockerWatcher, Inventory, docker_inspector
from .keepalive import KeepAliveChecker, docker_archive_stat
from .metrics import SnapshotCollector
from .server import make_app
from .snapshot import snapshot_json

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Intervals:
    """Every period the exporter keeps, in seconds (tests compress them)."""

    collect: float = 5.0
    keepalive: float = 60.0  # archive-API keep-alive reads, per container
    docker_retry: float = 5.0  # reconnect attempts while Docker is down


def load_clocks(store: ClockStore, errors: ErrorCounters) -> ClockBook:
    """The saved clocks; an unreadable file is set aside (counted, logged), never silently lost."""
    try:
        book = store.load()
    except ClockStateError as exc:
        errors.add("state")
        try:
            aside = store.set_aside()
        except OSError as move_error:
            logger.error("clock state unreadable (%s) and not movable: %s", exc, move_error)
        else:
            logger.error("clock state unreadable (%s); moved to %s, starting afresh", exc, aside)
        return ClockBook()
    logger.info(
        "clock state: %d containers, %d devices from %s",
        len(book.containers),
        len(book.devices),
        store.path,
    )
    return book


class ExporterService:
    """The running exporter: start() the threads, app() to serve, stop() to end cleanly."""

    def __init__(
        self,
        *,
        policy: Policy,
        backend: GpuBackend,
        docker_client: Callable[[], Any],
        state_dir: str,
        intervals: Intervals = Intervals(),
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.errors = ErrorCounters()
        self._listed_now = False  # --once: a synchronous listing stands in for the events stream
        self.backend = backend
        self.inventory = Inventory(docker_inspector(docker_client), backend.devices())
        self.watcher = DockerWatcher(
            docker_client, self.inventory, self.errors, retry_interval=intervals.docker_retry
        )
        store = ClockStore(state_dir)
        metrics = SnapshotCollector(
            lambda: self.collector.snapshot, self.errors, version=__version__, backend=backend.name
        )
        # Live series rendered fresh on every scrape: health, plus whatever the CLI adds here
        # (the policy reload counters).
        self.live_registry = CollectorRegistry()
        self.live_registry.register(metrics.health_metrics)
        self.exposition = Exposition(self.live_registry)
        self.collector = Collector(
            backend=backend,
            inventory=self.inventory,
            policy=policy,
            keepalive=KeepAliveChecker(
                path=policy.keep_alive.path,
                archive_stat=docker_archive_stat(docker_client),
                interval=intervals.keepalive,
                errors=self.errors,
            ),
            errors=self.errors,
            book=load_clocks(store, self.errors),
            store=store,
            docker_ok=lambda: self._listed_now or self.watcher.connected,
            clock=clock,
            interval=intervals.collect,
            on_publish=self.exposition.prepare,
        )
        self.registry = CollectorRegistry()
        self.registry.register(metrics)
        self._clock = clock

    def start(self) -> None:
        self.watcher.start()
        self.collector.start()

    def stop(self) -> None:
        self.watcher.stop()
        self.collector.stop()
        self.backend.close()

    def collect_now(self) -> bool:
        """One synchronous listing and collection (for `--once`)."""
        self.watcher.relist()
        self._listed_now = True
        return self.collector.collect_once()

    def state(self) -> dict[str, Any]:
        doc = snapshot_json(self.collector.snapshot)
        doc["docker_connected"] = self.watcher.connected
        doc["errors"] = self.errors.values()
        return doc

    def health(self) -> tuple[bool, dict[str, Any]]:
        snapshot = self.collector.snapshot
        age = None if snapshot is None else max(0.0, self._clock.time() - snapshot.timestamp)
        details = {
            "collector_running": self.collector.alive,
            "docker_connected": self.watcher.connected,
            "last_collect_age_seconds": age,
            "backend": self.backend.name,
        }
        return self.collector.alive, details

    def metrics_body(self, accept: str | None, accept_encoding: str | None) -> Body:
        return self.exposition.render(self.collector.snapshot, accept, accept_encoding)

    def app(self) -> Flask:
        return make_app(self.metrics_body, self.state, self.health)
