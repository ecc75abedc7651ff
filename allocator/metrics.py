"""The allocator's Prometheus series: counters it bumps, and gauges read from a snapshot."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .model import DENIAL_REASONS, Allocation

# events stream/reconcile, GPU reading, expiry pass, the cluster store down while following
# Docker, a cluster-store transaction replayed
ERROR_SOURCES = ("docker", "gpu", "tick", "store", "store_race")
ADOPTION_RESULTS = ("adopted", "refused")
WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 180, 300)


@dataclass(frozen=True)
class AllocatorSnapshot:
    """What the gauges show: live allocations, queue length, free devices per profile."""

    allocations: tuple[Allocation, ...]
    queue_length: int
    free_by_profile: dict[str, int]


class AllocatorMetrics:
    """Counters and the wait histogram; `registry=None` creates them unregistered."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.grants = Counter(
            "ds01_allocator_grants",
            "Allocations granted (each grant counts once, whatever its device count).",
            registry=registry,
        )
        self.denials = Counter(
            "ds01_allocator_denials",
            "Allocation requests refused, by reason (quota, timeout, impossible, ...).",
            ["reason"],
            registry=registry,
        )
        for reason in DENIAL_REASONS:
            self.denials.labels(reason=reason)
        self.adoptions = Counter(
            "ds01_allocator_adoptions",
            "GPU containers that bypassed the allocator, by result: adopted (given a bound "
            "allocation) or refused (left unmanaged; counted once per container start).",
            ["result"],
            registry=registry,
        )
        for result in ADOPTION_RESULTS:
            self.adoptions.labels(result=result)
        self.extensions = Counter(
            "ds01_allocator_extensions",
            "Deadline extensions asked for with `container extend`, by kind (runtime, idle) "
            "and result (granted, refused).",
            ["kind", "result"],
            registry=registry,
        )
        for kind in ("runtime", "idle"):
            for result in ("granted", "refused"):
                self.extensions.labels(kind=kind, result=result)
        self.queue_wait = Histogram(
            "ds01_allocator_queue_wait_seconds",
            "Seconds a request spent in the wait queue until granted or timed out "
            "(0 for a request granted at once).",
            buckets=WAIT_BUCKETS,
            registry=registry,
        )

        self.errors = Counter(
            "ds01_allocator_errors",
            "Failures of the allocator's background work, by source: docker (events stream or "
            "reconcile), gpu (GPU inventory read), tick (expiry pass), store (the cluster "
            "store unreachable while following Docker), store_race (a cluster-store "
            "transaction lost a serialization race and was replayed).",
            ["source"],
            registry=registry,
        )
        for source in ERROR_SOURCES:
            self.errors.labels(source=source)

    def count_error(self, source: str) -> None:
        self.errors.labels(source=source).inc()

    def granted(self, waited: float) -> None:
        self.grants.inc()
        self.queue_wait.observe(max(0.0, waited))

    def adoption(self, result: str) -> None:
        self.adoptions.labels(result=result).inc()

    def denied(self, reason: str, waited: float | None = None) -> None:
        self.denials.labels(reason=reason).inc()
        if waited is not None:
            self.queue_wait.observe(max(0.0, waited))


class AllocatorCollector(Collector):
    """Gauges built fresh from `snapshot()` on each scrape."""

    def __init__(self, snapshot: Callable[[], AllocatorSnapshot]) -> None:
        self._snapshot = snapshot

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return list(self._families(None))

    def collect(self) -> Iterable[GaugeMetricFamily]:
        return list(self._families(self._snapshot()))

    @staticmethod
    def _families(snap: AllocatorSnapshot | None) -> Iterable[GaugeMetricFamily]:
        devices = GaugeMetricFamily(
            "ds01_allocation_device",
            "1 per device of each live allocation; state is reserved, bound or held.",
            labels=["allocation", "user", "group", "container_id", "device_uuid", "state"],
        )
        queue = GaugeMetricFamily(
            "ds01_allocator_queue_length", "Requests waiting in the allocator queue."
        )
        free = GaugeMetricFamily(
            "ds01_allocator_devices_free",
            "Devices the allocator could hand out now, by MIG profile (empty = whole GPU).",
            labels=["profile"],
        )
        if snap is not None:
            for alloc in snap.allocations:
                for uuid in alloc.devices:
                    devices.add_metric(
                        [alloc.id, alloc.user, alloc.group, alloc.container_id, uuid, alloc.state],
                        1.0,
                    )
            queue.add_metric([], float(snap.queue_length))
            for profile, count in sorted(snap.free_by_profile.items()):
                free.add_metric([profile], float(count))
        yield devices
        yield queue
        yield free
