"""SIGHUP re-reads the policy file: a valid one takes effect at once, a bad one is refused with
its key named (logged, counted) and the last good policy stays in force.

Every service (exporter, enforcer, allocator) wires one `PolicyReloader` to the parts that
hold the policy; the reload itself runs in a small thread, never inside the signal handler.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .policy import Policy, PolicyError, load_policy_or_default

logger = logging.getLogger(__name__)

RESULTS = ("applied", "refused")


class _ReloadMetrics(Collector):
    """ds01_policy_reloads_total{result} and the load time of the policy in force."""

    def __init__(self) -> None:
        self.counts = dict.fromkeys(RESULTS, 0)
        self.loaded_at = 0.0

    def describe(self):
        return self.collect()

    def collect(self):
        reloads = CounterMetricFamily(
            "ds01_policy_reloads",
            "Policy reloads asked for by SIGHUP, by result: applied, or refused (the file was "
            "invalid and the last good policy stayed in force).",
            labels=["result"],
        )
        for result, count in self.counts.items():
            reloads.add_metric([result], count)
        loaded = GaugeMetricFamily(
            "ds01_policy_loaded_timestamp_seconds",
            "When the policy in force was loaded (Unix seconds).",
            value=self.loaded_at,
        )
        return [reloads, loaded]


class PolicyReloader:
    """Holds the policy in force; `reload()` swaps it only for a file that validates."""

    def __init__(
        self,
        policy: Policy,
        *,
        path: str | None,
        apply: Callable[[Policy], None],
        registry: CollectorRegistry | None = None,
        load: Callable[[str | None], Policy] = load_policy_or_default,
        now: Callable[[], float] | None = None,
    ) -> None:
        self.current = policy
        self._path, self._apply, self._load = path, apply, load
        self._lock = threading.Lock()
        self._now = now or time.time
        self.metrics = _ReloadMetrics()
        self.metrics.loaded_at = self._now()
        if registry is not None:
            registry.register(self.metrics)

    def reload(self) -> bool:
        """Re-read the file; True when the new policy is now in force."""
        with self._lock:
            try:
                fresh = self._load(self._path)
            except PolicyError as exc:
                self.metrics.counts["refused"] += 1
                logger.error("policy reload refused, the last good policy stays: %s", exc)
                return False
            self._apply(fresh)
            self.current = fresh
            self.metrics.counts["applied"] += 1
            self.metrics.loaded_at = self._now()
            logger.info("policy reloaded from %s", fresh.source)
            return True

    def on_sighup(self) -> None:
        """Reload on every SIGHUP (in a thread: the handler itself only starts it)."""

        def handler(_signum: int, _frame: object) -> None:
            threading.Thread(target=self.reload, name="policy-reload", daemon=True).start()

        signal.signal(signal.SIGHUP, handler)
