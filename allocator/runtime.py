"""Assembles one running allocator: store, service, Docker watcher, ticker, HTTP server.

Used by `ds01 allocator` and by tests, so both run exactly the same pieces.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from ds01.clock import SYSTEM_CLOCK, Clock
from ds01.cluster_policy import effective_node
from ds01.gpu import GpuBackend
from ds01.policy import Policy
from ds01.tokenfile import load_token

from .api import create_app
from .extension_desk import ExtensionDesk
from .history import HistoryLog
from .lifecycle import DockerWatcher
from .metrics import AllocatorCollector, AllocatorMetrics
from .server import AllocatorServer
from .service import Allocator, Settings
from .store import AllocationStore, StoreUnavailable
from .store_sqlite import SqliteAllocationStore

logger = logging.getLogger(__name__)


PRUNE_INTERVAL = 600.0  # seconds between history prunes (the first runs at start)


def prune_history(allocator: Allocator) -> int:
    """Forget allocations released longer ago than the policy's `allocation_history`."""
    before = allocator.clock.time() - allocator.policy.allocation_history
    with allocator.store.transaction() as tx:
        removed = tx.prune(before)
    if removed:
        logger.info("pruned %d released allocations (released before %.0f)", removed, before)
    return removed


class Ticker:
    """Calls allocator.tick() every `interval` seconds and prunes the history every
    `prune_interval`, until stopped; a failed pass is logged and counted."""

    def __init__(
        self,
        allocator: Allocator,
        interval: float,
        *,
        prune_interval: float = PRUNE_INTERVAL,
        desk: ExtensionDesk | None = None,
    ) -> None:
        self.allocator, self.interval = allocator, interval
        self.desk = desk
        self.prune_interval = prune_interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="allocator-ticker", daemon=True)
        self.errors = 0
        self.pruned = 0  # released allocations removed so far

    def start(self) -> Ticker:
        self._thread.start()
        return self

    def _run(self) -> None:
        next_prune = time.monotonic()
        while True:
            if time.monotonic() >= next_prune:
                next_prune = time.monotonic() + self.prune_interval
                try:
                    self.pruned += prune_history(self.allocator)
                    if self.desk is not None:
                        self.desk.publish()  # drops the totals of released allocations
                except Exception:
                    self.errors += 1
                    logger.exception("pruning the allocation history failed")
            if self._stop.wait(self.interval):
                return
            try:
                self.allocator.tick()
                self.allocator.history.flush()  # this tick's grant and wait lines, one write
                self.allocator.store.checkpoint()  # outside the decision lock
            except Exception:
                self.errors += 1
                self.allocator.metrics.count_error("tick")
                logger.exception("allocator tick failed")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


@dataclass
class AllocatorRuntime:
    allocator: Allocator
    store: AllocationStore
    server: AllocatorServer
    ticker: Ticker
    watcher: DockerWatcher | None
    registry: CollectorRegistry
    desk: ExtensionDesk

    @property
    def socket_path(self) -> Path:
        return self.server.socket_path

    def stop(self) -> None:
        self.server.close()
        self.ticker.stop()
        if self.watcher is not None:
            self.watcher.stop()
        self.store.close()
        self.allocator.history.flush()


def open_store(policy: Policy, db_path: str | os.PathLike[str]) -> AllocationStore:
    """`cluster.store`: SQLite at `db_path` (one node) or the shared PostgreSQL (every node)."""
    node = effective_node(policy.services.node)
    cluster = policy.cluster
    if cluster.store != "postgres":
        return SqliteAllocationStore(db_path, node=node)
    from .store_postgres import PostgresAllocationStore  # psycopg only where it is used

    # The DSN file holds a password: the same checks as a token file (owner, mode).
    dsn = cluster.postgres_dsn or load_token(cluster.postgres_dsn_file)
    store = PostgresAllocationStore(dsn, node=node)
    logger.info("allocation store: PostgreSQL at %s, node %s", store.where, node)
    return store


def build_runtime(
    policy: Policy,
    *,
    db_path: str | os.PathLike[str],
    socket_path: str | os.PathLike[str],
    backend: GpuBackend,
    docker_client: Any = None,
    listen: tuple[str, int] | None = None,
    token: str | None = None,
    threads: int = 64,
    tick: float = 0.1,
    prune_interval: float = PRUNE_INTERVAL,
    settings: Settings = Settings(),
    clock: Clock = SYSTEM_CLOCK,
    max_poll: float = 30.0,
    extensions_path: str | os.PathLike[str] | None = None,
    audit_log: str | os.PathLike[str] | None = None,
    history_log: str | os.PathLike[str] | None = None,
) -> AllocatorRuntime:
    """Everything wired and reconciled, not yet serving (call .server.run() or start_in_thread)."""
    registry = CollectorRegistry()
    store = open_store(policy, db_path)
    allocator = Allocator(
        store=store,
        backend=backend,
        policy=policy,
        clock=clock,
        metrics=AllocatorMetrics(registry),
        settings=settings,
        history=HistoryLog(history_log),
    )
    registry.register(AllocatorCollector(allocator.snapshot))
    watcher = None
    if docker_client is not None:
        # Reconcile before serving when Docker answers; the watcher reconciles again when it
        # connects and after every reconnect, so an allocator started while Docker is down
        # follows Docker as soon as it answers.
        watcher = DockerWatcher(allocator, docker_client)
        try:
            watcher.reconcile_now()
        except Exception as exc:  # noqa: BLE001 - Docker down: the watcher keeps retrying
            logger.warning("Docker not reachable at start (%s); following it once it answers", exc)
    # The totals file the exporter adds to its deadlines, rewritten from the database now.
    desk = ExtensionDesk(allocator, extensions_path or Path(db_path).parent / "extensions.json")
    try:
        desk.publish()
    except StoreUnavailable as exc:  # PostgreSQL down at start: the ticker publishes later
        logger.warning("extension totals not written at start: %s", exc)
    app = create_app(
        allocator,
        registry=registry,
        token=token,
        max_poll=max_poll,
        audit_log=str(audit_log) if audit_log else None,
        desk=desk,
    )
    server = AllocatorServer(app, socket_path, listen=listen, threads=threads)
    ticker = Ticker(allocator, tick, prune_interval=prune_interval, desk=desk)
    return AllocatorRuntime(allocator, store, server, ticker, watcher, registry, desk)


def start_runtime(runtime: AllocatorRuntime) -> AllocatorRuntime:
    """Start the background pieces and serve from a thread (tests, benchmarks)."""
    if runtime.watcher is not None:
        runtime.watcher.start()
    runtime.ticker.start()
    runtime.server.start_in_thread()
    return runtime
