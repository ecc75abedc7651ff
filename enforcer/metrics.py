"""The enforcer's own metrics (DESIGN.md names): what it received, what it did, what waits."""

from __future__ import annotations

import threading
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ds01.clock import SYSTEM_CLOCK, Clock

from .journal import QueueStats

ENDPOINTS = ("alerts", "notify")
ALERT_STATUSES = ("accepted", "duplicate", "resolved", "wrong_endpoint", "not_mine")
REQUEST_CODES = ("200", "400", "401", "413", "503")
ACTION_RESULTS = {
    "stop": ("stopped", "deferred", "skipped", "failed", "dry_run"),
    "notify": ("notified", "skipped", "failed", "dry_run"),
    "remove": ("removed", "skipped", "failed", "dry_run"),
}
DEPENDENCIES = ("docker", "prometheus", "journal")
CHANNELS = ("container_file", "terminal")
DELIVERY_RESULTS = ("delivered", "refused", "failed")
JOB_ERROR_STAGES = ("decide", "record", "journal", "loop")


class _QueueCollector(Collector):
    """Queue depth and oldest pending age from the last snapshot the worker published."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._stats = QueueStats(0, None)
        self._lock = threading.Lock()

    def publish(self, stats: QueueStats) -> None:
        with self._lock:
            self._stats = stats

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return self._families(QueueStats(0, None))

    def collect(self) -> Iterable[GaugeMetricFamily]:
        with self._lock:
            stats = self._stats
        return self._families(stats)

    def _families(self, stats: QueueStats) -> list[GaugeMetricFamily]:
        age = 0.0
        if stats.oldest_received_at is not None:
            age = max(0.0, self._clock.time() - stats.oldest_received_at)
        return [
            GaugeMetricFamily(
                "ds01_enforcer_queue_depth",
                "Journaled actions not yet decided, in jobs.",
                value=stats.depth,
            ),
            GaugeMetricFamily(
                "ds01_enforcer_oldest_pending_age_seconds",
                "Age of the oldest undecided journaled action in seconds (0 when none).",
                value=age,
            ),
        ]


class EnforcerMetrics:
    """All enforcer series on one registry (`registry=None`: a private one, for tests)."""

    def __init__(
        self, registry: CollectorRegistry | None = None, *, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.alerts = Counter(
            "ds01_enforcer_alerts",
            "Alerts received by webhook endpoint and what became of them, in alerts.",
            ["endpoint", "status"],
            registry=r,
        )
        self.requests = Counter(
            "ds01_enforcer_requests",
            "Webhook requests by endpoint and HTTP status code, in requests.",
            ["endpoint", "code"],
            registry=r,
        )
        self.actions = Counter(
            "ds01_enforcer_actions",
            "Decisions taken on journaled actions by action and result, in actions.",
            ["action", "result"],
            registry=r,
        )
        self.latency = Histogram(
            "ds01_enforcer_action_latency_seconds",
            "Time from receiving an alert to deciding on it, in seconds.",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900),
            registry=r,
        )
        self.dependency_errors = Counter(
            "ds01_enforcer_dependency_errors",
            "Failed attempts to reach Docker or Prometheus, or to write the journal, in errors.",
            ["dependency"],
            registry=r,
        )
        self.notifications = Counter(
            "ds01_enforcer_notifications",
            "Owner notifications by channel and result (refused: mesg n or not the owner's "
            "terminal), in deliveries.",
            ["channel", "result"],
            registry=r,
        )
        self.job_errors = Counter(
            "ds01_enforcer_job_errors",
            "Errors while deciding, recording or journaling a job (retried with backoff), "
            "by stage, in errors.",
            ["stage"],
            registry=r,
        )
        self.queue = _QueueCollector(clock)
        r.register(self.queue)
        for endpoint in ENDPOINTS:  # every series exists from the start, at 0
            for status in ALERT_STATUSES:
                self.alerts.labels(endpoint, status)
            for code in REQUEST_CODES:
                self.requests.labels(endpoint, code)
        for action, results in ACTION_RESULTS.items():
            for result in results:
                self.actions.labels(action, result)
        for channel in CHANNELS:
            for result in DELIVERY_RESULTS:
                self.notifications.labels(channel, result)
        for dependency in DEPENDENCIES:
            self.dependency_errors.labels(dependency)
        for stage in JOB_ERROR_STAGES:
            self.job_errors.labels(stage)
