"""Snapshot in, metrics out: a custom prometheus-client collector (names: DESIGN.md, Metrics).

`collect()` turns the last published snapshot into fresh metric families and never calls
Docker or the GPU backend; `describe()` lists the families so registering does not collect.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .health import ErrorCounters
from .snapshot import ContainerState, Snapshot

DEVICE_LABELS = ["device_uuid"]
# `index` is what a user types (`0`, `0:2` = NVML MIG device 2 of GPU 0): an addition to DESIGN.md.
DEVICE_INFO_LABELS = [
    "device_uuid", "gpu_uuid", "gpu_index", "index", "gi_id", "profile", "model", "kind",
]  # fmt: skip
CONTAINER_LABELS = ["container_id", "container", "user", "group", "type"]
CONTAINER_INFO_LABELS = [*CONTAINER_LABELS, "image", "managed", "allocation"]

# name -> (help, labels); every family the exporter can emit, in one place.
FAMILIES: dict[str, tuple[str, list[str]]] = {
    "ds01_gpu_device_info": (
        "Always 1: one series per whole GPU and per MIG instance, with its identity.",
        DEVICE_INFO_LABELS,
    ),
    "ds01_gpu_device_activity_ratio": (
        "Device activity as a ratio from 0 to 1; absent where it cannot be measured.",
        DEVICE_LABELS,
    ),
    "ds01_gpu_device_processes": ("Compute processes on the device (count).", DEVICE_LABELS),
    "ds01_gpu_device_memory_used_bytes": ("Device memory in use, in bytes.", DEVICE_LABELS),
    "ds01_gpu_device_memory_total_bytes": ("Device memory in total, in bytes.", DEVICE_LABELS),
    "ds01_gpu_device_busy": (
        "1 when the device counts as busy for idleness, else 0.",
        DEVICE_LABELS,
    ),
    "ds01_gpu_device_last_busy_timestamp_seconds": (
        "When the device last counted as busy, in Unix seconds.",
        DEVICE_LABELS,
    ),
    "ds01_container_info": (
        "Always 1: one series per running container with GPU access, with its identity.",
        CONTAINER_INFO_LABELS,
    ),
    "ds01_container_gpu_device": (
        "Always 1: one series per device a running container holds.",
        [*CONTAINER_LABELS, "device_uuid"],
    ),
    "ds01_container_start_time_seconds": (
        "First start of the container in Unix seconds; a restart does not reset it.",
        CONTAINER_LABELS,
    ),
    "ds01_container_busy": (
        "1 when a device the container holds is busy for it, else 0.",
        CONTAINER_LABELS,
    ),
    "ds01_container_last_busy_timestamp_seconds": (
        "When the container last counted as busy, in Unix seconds (starts at its first start).",
        CONTAINER_LABELS,
    ),
    "ds01_container_idle_deadline_timestamp_seconds": (
        "Unix seconds after which the container counts as idle too long; +Inf when a fresh "
        "keep-alive file or an idle exemption applies.",
        CONTAINER_LABELS,
    ),
    "ds01_container_runtime_deadline_timestamp_seconds": (
        "Unix seconds after which the container has run too long; +Inf under an exemption.",
        CONTAINER_LABELS,
    ),
    "ds01_container_keep_alive": (
        "1 when the container's keep-alive file is present and fresh, else 0.",
        CONTAINER_LABELS,
    ),
    "ds01_exporter_build_info": (
        "Always 1: the exporter's version and the GPU backend in use.",
        ["version", "backend"],
    ),
    "ds01_exporter_collect_duration_seconds": (
        "Wall time of the last published collection cycle, metrics rendering included, in seconds.",
        [],
    ),
    "ds01_exporter_last_collect_timestamp_seconds": (
        "When the last published collection ran, in Unix seconds (0 before the first one).",
        [],
    ),
}
ERRORS_NAME = "ds01_exporter_collect_errors"
ERRORS_HELP = "Collection errors by source (docker, gpu, keepalive, state), a count."


def _gauges() -> dict[str, GaugeMetricFamily]:
    return {
        name: GaugeMetricFamily(name, help_text, labels=labels)
        for name, (help_text, labels) in FAMILIES.items()
    }


def _bool(value: bool) -> float:
    return 1.0 if value else 0.0


HEALTH_FAMILIES = (
    "ds01_exporter_build_info",
    "ds01_exporter_collect_duration_seconds",
    "ds01_exporter_last_collect_timestamp_seconds",
)


class SnapshotMetrics(Collector):
    """Device and container families of one snapshot (`source()` is read once per collect)."""

    def __init__(self, source: Callable[[], Snapshot | None]) -> None:
        self._source = source

    def describe(self) -> Iterator[Metric]:
        yield from (f for name, f in _gauges().items() if name not in HEALTH_FAMILIES)

    def collect(self) -> Iterator[Metric]:
        families = {n: f for n, f in _gauges().items() if n not in HEALTH_FAMILIES}
        snapshot = self._source()
        if snapshot is not None:
            for name, series in snapshot_series(snapshot).items():
                for labels, number in series:
                    families[name].add_metric(list(labels), number)
        yield from families.values()


class HealthMetrics(Collector):
    """The exporter's own health: build info, last collection, live error counters."""

    def __init__(
        self,
        source: Callable[[], Snapshot | None],
        errors: ErrorCounters,
        *,
        version: str,
        backend: str,
    ) -> None:
        self._source = source
        self._errors = errors
        self._version = version
        self._backend = backend

    def describe(self) -> Iterator[Metric]:
        gauges = _gauges()
        yield from (gauges[name] for name in HEALTH_FAMILIES)
        yield CounterMetricFamily(ERRORS_NAME, ERRORS_HELP, labels=["source"])

    def collect(self) -> Iterator[Metric]:
        snapshot = self._source()
        gauges = _gauges()
        gauges["ds01_exporter_build_info"].add_metric([self._version, self._backend], 1)
        gauges["ds01_exporter_collect_duration_seconds"].add_metric(
            [], snapshot.duration if snapshot else 0.0
        )
        gauges["ds01_exporter_last_collect_timestamp_seconds"].add_metric(
            [], snapshot.timestamp if snapshot else 0.0
        )
        yield from (gauges[name] for name in HEALTH_FAMILIES)
        errors = CounterMetricFamily(ERRORS_NAME, ERRORS_HELP, labels=["source"])
        for source, count in sorted(self._errors.values().items()):
            errors.add_metric([source], count)
        yield errors


class SnapshotCollector(Collector):
    """Everything in one collector: snapshot families plus health (for a plain registry)."""

    def __init__(
        self,
        source: Callable[[], Snapshot | None],
        errors: ErrorCounters,
        *,
        version: str,
        backend: str,
    ) -> None:
        self.snapshot_metrics = SnapshotMetrics(source)
        self.health_metrics = HealthMetrics(source, errors, version=version, backend=backend)

    def describe(self) -> Iterator[Metric]:
        yield from self.snapshot_metrics.describe()
        yield from self.health_metrics.describe()

    def collect(self) -> Iterator[Metric]:
        yield from self.snapshot_metrics.collect()
        yield from self.health_metrics.collect()


Series = dict[str, list[tuple[tuple[str, ...], float]]]  # family -> [(label values, value)]


def snapshot_series(snapshot: Snapshot) -> Series:
    """Every device and container series of a snapshot, label values in FAMILIES order.

    The one place that says which series a snapshot makes: `SnapshotMetrics` and the
    incremental text renderer (`exporter/textformat.py`) both read it.
    """
    out: Series = {name: [] for name in FAMILIES if name not in HEALTH_FAMILIES}
    for state in snapshot.devices:
        d = state.device
        key = (d.device_uuid,)
        gi_id = "" if d.gi_id is None else str(d.gi_id)
        info = (d.device_uuid, d.gpu_uuid, str(d.gpu_index), d.index, gi_id, d.profile, d.model)
        out["ds01_gpu_device_info"].append(((*info, d.kind), 1.0))
        if state.activity_ratio is not None:
            out["ds01_gpu_device_activity_ratio"].append((key, state.activity_ratio))
        if state.processes is not None:
            out["ds01_gpu_device_processes"].append((key, state.processes))
        if state.memory_used_bytes is not None:
            out["ds01_gpu_device_memory_used_bytes"].append((key, state.memory_used_bytes))
        out["ds01_gpu_device_memory_total_bytes"].append((key, d.memory_total_bytes))
        out["ds01_gpu_device_busy"].append((key, _bool(state.busy)))
        out["ds01_gpu_device_last_busy_timestamp_seconds"].append((key, state.last_busy))
    for container in snapshot.containers:
        _container_series(out, container)
    return out


def _container_series(out: Series, c: ContainerState) -> None:
    f = c.facts
    key = (f.container_id, f.name, f.user, c.group, f.type)
    out["ds01_container_info"].append(
        ((*key, f.image, "true" if f.managed else "false", f.allocation), 1.0)
    )
    for device_uuid in f.gpu_devices:
        out["ds01_container_gpu_device"].append(((*key, device_uuid), 1.0))
    out["ds01_container_start_time_seconds"].append((key, c.first_start))
    out["ds01_container_busy"].append((key, _bool(c.busy)))
    out["ds01_container_last_busy_timestamp_seconds"].append((key, c.last_busy))
    out["ds01_container_idle_deadline_timestamp_seconds"].append((key, c.idle_deadline))
    out["ds01_container_runtime_deadline_timestamp_seconds"].append((key, c.runtime_deadline))
    out["ds01_container_keep_alive"].append((key, _bool(c.keep_alive)))
