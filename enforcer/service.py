"""The enforcer assembled from its parts, once, for the CLI and for tests alike."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import waitress
from flask import Flask
from waitress import wasyncore

from ds01.clock import SYSTEM_CLOCK, Clock
from ds01.policy import Policy

from .app import DEFAULT_MAX_BODY, create_app
from .audit import AuditLog
from .executor import Executor
from .facts import DockerSource, Health, PrometheusSource
from .intake import Intake
from .journal import Journal
from .metrics import EnforcerMetrics
from .node_scope import NodeScope
from .warned import WarningBook
from .worker import Worker, WorkerSettings

logger = logging.getLogger(__name__)

# A webhook holds a server thread until its group commit is fsync'd: the thread count bounds
# how many share one fsync (200 concurrent posts: ack p99 ~4.7x an empty app at 8, ~1.7-2x at 32).
HTTP_THREADS = 32


@dataclass(frozen=True)
class EnforcerConfig:
    """Everything the enforcer needs besides the policy and the token."""

    journal_path: Path
    audit_path: Path
    prometheus_url: str
    docker_host: str | None = None
    notice_path: str = "/workspace/.ds01-alerts"
    dry_run: bool = False
    max_body: int = DEFAULT_MAX_BODY
    health_ttl: float = 1.0
    node: str = ""  # this node's name; "" = the policy's services.node, else the host name
    worker: WorkerSettings = field(default_factory=WorkerSettings)


class Enforcer:
    """Journal, audit log, sources, executor, worker and Flask app, wired together."""

    def __init__(
        self, config: EnforcerConfig, *, policy: Policy, token: str, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.config = config
        self.node_scope = NodeScope.from_policy(policy, node=config.node)
        self.journal = Journal(config.journal_path)
        self.warnings = WarningBook(config.journal_path.with_name("enforcer-warnings.sqlite"))
        self.audit = AuditLog(config.audit_path, dry_run=config.dry_run, clock=clock)
        self.metrics = EnforcerMetrics(clock=clock)
        intake = Intake()

        def give_way() -> None:
            """Before each call out of a worker (every Docker call, every Prometheus query):
            a webhook burst is acknowledged first (at most `intake_hold` seconds)."""
            intake.wait_quiet(config.worker.intake_hold)

        self.docker = DockerSource(config.docker_host, give_way=give_way)
        self.prometheus = PrometheusSource(config.prometheus_url, give_way=give_way)
        self.health = Health(self.docker, self.prometheus, ttl=config.health_ttl)
        self.executor = executor = Executor(
            self.docker,
            policy=policy,
            notice_path=config.notice_path,
            dry_run=config.dry_run,
            clock=clock,
            on_delivery=lambda channel, result: self.metrics.notifications.labels(
                channel, result
            ).inc(),
        )
        self.worker = Worker(
            journal=self.journal,
            docker_source=self.docker,
            prometheus=self.prometheus,
            executor=executor,
            policy=policy,
            audit=self.audit,
            metrics=self.metrics,
            health=self.health,
            intake=intake,
            settings=config.worker,
            clock=clock,
            warnings=self.warnings,
        )
        self.app: Flask = create_app(
            token=token,
            journal=self.journal,
            metrics=self.metrics,
            health=self.health,
            on_enqueue=self._enqueued,
            intake=intake,
            clock=clock,
            max_body=config.max_body,
            worker_health=self.worker.liveness,
            node_scope=lambda: self.node_scope,
            audit=self.audit,
        )

    def use_policy(self, policy: Policy) -> None:
        """A reloaded policy: jobs decided from now on use it (SIGHUP)."""
        self.worker.policy = policy
        self.executor.policy = policy
        self.node_scope = NodeScope.from_policy(policy, node=self.config.node)

    def _enqueued(self) -> None:
        self.worker.wake()  # the worker publishes the queue metrics: no extra query per webhook

    def make_server(self, host: str, port: int, *, threads: int = HTTP_THREADS):
        """A waitress server for the app: run() blocks until a signal ends it, or until
        `stop_server` (from another thread) has the loop close its sockets."""
        return waitress.create_server(
            self.app,
            host=host,
            port=port,
            threads=threads,
            ident="ds01-enforcer",
            connection_limit=1000,  # Alertmanager bursts: queue connections, don't refuse them
            max_request_body_size=self.config.max_body * 2,  # Flask answers 413 below this
        )

    @staticmethod
    def stop_server(server: Any) -> None:
        """End `server.run()` from another thread: the loop thread closes its own sockets
        (closing them from here races its select(): EBADF in the loop thread)."""
        server.trigger.pull_trigger(lambda: wasyncore.close_all(server._map))

    def close(self) -> None:
        self.worker.stop()
        self.journal.close()
        self.warnings.close()
        self.audit.close()
