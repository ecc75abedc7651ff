"""The background collector: sample the GPUs, advance the clocks, publish an immutable snapshot.

One cycle every `interval`; a scrape only reads `Collector.snapshot`. While the GPU backend
fails, the clocks keep moving conservatively (unmeasured = busy) but no new snapshot is
published: the last good one stays, with its timestamp, so staleness is visible. Device facts
do not depend on Docker: while Docker is down (also before it ever answered) each cycle
publishes fresh devices, and keeps the last containers and the last full-collect timestamp
(0 before the first), so rules still see that the container picture is stale.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime

from ds01.cgroups import container_id_of_pid
from ds01.clock import SYSTEM_CLOCK, Clock
from ds01.gpu import DeviceSample, GpuBackend, GpuDevice, GpuReading, device_is_busy
from ds01.policy import Limits, Policy

from .clocks import ClockBook, ClockStore
from .deadlines import container_busy, idle_deadline, keep_alive_fresh, runtime_deadline
from .extensions import NONE as NO_EXTENSION
from .extensions import GrantedExtension
from .health import Episode, ErrorCounters
from .inventory import Inventory, KnownContainer
from .keepalive import KeepAliveChecker
from .process_gpu import devices_by_process, with_seen_devices
from .snapshot import ContainerState, DeviceState, Snapshot

logger = logging.getLogger(__name__)

PidOwner = Callable[[int], str | None]
SAVE_EVERY = 60.0  # seconds between saves of clocks that only moved forward


class Collector:
    """Owns the clocks; publishes a new Snapshot after every good cycle."""

    def __init__(
        self,
        *,
        backend: GpuBackend,
        inventory: Inventory,
        policy: Policy,
        keepalive: KeepAliveChecker,
        errors: ErrorCounters,
        book: ClockBook | None = None,
        store: ClockStore | None = None,
        docker_ok: Callable[[], bool] = lambda: True,
        clock: Clock = SYSTEM_CLOCK,
        interval: float = 5.0,
        pid_owner: PidOwner = container_id_of_pid,
        on_publish: Callable[[Snapshot], None] | None = None,
        extensions: Callable[[], Mapping[str, GrantedExtension]] = dict,
    ) -> None:
        self._extensions = extensions
        self._backend = backend
        self._devices = backend.devices()
        self._inventory = inventory
        self._policy = policy
        self._keepalive = keepalive
        self._errors = errors
        self._book = book if book is not None else ClockBook()
        self._store = store
        self._docker_ok = docker_ok
        self._clock = clock
        self.interval = interval
        self._pid_owner = pid_owner
        self._on_publish = on_publish
        self._measured_since = clock.time()
        self._saved_at = float("-inf")
        self._snapshot: Snapshot | None = None
        self._last_summary: tuple[int, ...] = ()
        self.last_cycle_cpu_seconds = 0.0
        self._gpu_episode = Episode(logger, "GPU backend")
        self._state_episode = Episode(logger, "clock state file")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="collector", daemon=True)

    def use_policy(self, policy: Policy) -> None:
        """A reloaded policy: the next cycle decides with it (SIGHUP, ds01/policy_reload.py)."""
        self._policy = policy
        self._keepalive.path = policy.keep_alive.path

    @property
    def snapshot(self) -> Snapshot | None:
        """The last published snapshot (None before the first good cycle)."""
        return self._snapshot

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """End the loop after the cycle in flight, then save the clocks one last time."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._save_state()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.collect_once()
            except Exception:
                logger.exception("collection cycle failed")
            self._stop.wait(self.interval)

    # --- one cycle ---------------------------------------------------------------------------

    def collect_once(self) -> bool:
        """Run one cycle; True when a new snapshot was published."""
        wall_start, cpu_start = time.perf_counter(), time.thread_time()
        now = self._clock.time()
        reading = self._read_gpu()
        samples: Mapping[str, DeviceSample] = reading.samples if reading is not None else {}
        threshold = self._policy.busy_threshold
        device_busy = {
            d.device_uuid: device_is_busy(samples.get(d.device_uuid), busy_threshold=threshold)
            for d in self._devices
        }
        devices = tuple(
            self._device_state(d, samples.get(d.device_uuid), device_busy[d.device_uuid], now)
            for d in self._devices
        )
        entries = self._inventory.entries()
        seen = devices_by_process(samples, self._pid_owner)
        running = [
            replace(e, facts=with_seen_devices(e.facts, seen.get(e.facts.container_id, ())))
            for e in entries
            if e.facts.running
        ]
        running = [e for e in running if e.facts.has_gpu]
        containers = self._container_states(running, samples, device_busy, now)
        if self._inventory.ready:
            ids = [e.facts.container_id for e in entries]
            self._book.retain(ids)
            self._keepalive.retain(ids)
        self._save_state(now=now)
        self.last_cycle_cpu_seconds = time.thread_time() - cpu_start
        docker_ok = self._inventory.ready and self._docker_ok()
        if reading is None:
            logger.debug(
                "cycle not published (gpu failed, docker %s)", "ok" if docker_ok else "down"
            )
            return False
        if docker_ok:
            snapshot = Snapshot(
                timestamp=now,
                duration=time.perf_counter() - wall_start,
                backend=self._backend.name,
                devices=devices,
                containers=containers,
            )
        else:
            snapshot = self._devices_only(devices)
            logger.debug("cycle published devices only (docker down)")
        if self._on_publish is not None:
            try:
                self._on_publish(snapshot)  # pre-render /metrics before scrapes can see it
            except Exception:
                logger.exception("preparing the metrics body failed; scrapes will render it")
        # The published duration covers the whole cycle, pre-rendering included.
        snapshot = replace(snapshot, duration=time.perf_counter() - wall_start)
        if self._snapshot is None:
            # Start-up objects (modules, clients, caches) out of the collector's way: without
            # this a full collection walks them all, a 20+ ms pause in some cycle.
            gc.freeze()
        self._snapshot = snapshot
        self.last_cycle_cpu_seconds = time.thread_time() - cpu_start
        self._log_summary(snapshot)
        return True

    def _devices_only(self, devices: tuple[DeviceState, ...]) -> Snapshot:
        """Fresh devices; the containers and the full-collect time of the last full snapshot."""
        last = self._snapshot
        return Snapshot(
            timestamp=last.timestamp if last is not None else 0.0,
            duration=last.duration if last is not None else 0.0,
            backend=self._backend.name,
            devices=devices,
            containers=last.containers if last is not None else (),
        )

    def _log_summary(self, snapshot: Snapshot) -> None:
        """One INFO line when the picture changes, a DEBUG line for every other cycle."""
        summary = (
            len(snapshot.containers),
            sum(c.busy for c in snapshot.containers),
            sum(d.busy for d in snapshot.devices),
            len(snapshot.devices),
        )
        level = logging.INFO if summary != self._last_summary else logging.DEBUG
        self._last_summary = summary
        logger.log(
            level,
            "collected: %d GPU containers (%d busy), %d of %d devices busy, in %.3fs",
            *summary,
            snapshot.duration,
        )

    def _read_gpu(self) -> GpuReading | None:
        try:
            reading = self._backend.read()
        except Exception as exc:  # noqa: BLE001 - a backend failure must not stop the loop
            self._errors.add("gpu")
            self._gpu_episode.fail(exc)
            return None
        if reading.errors:
            self._errors.add("gpu", len(reading.errors))
            self._gpu_episode.fail(", ".join(sorted(set(reading.errors))))
        else:
            self._gpu_episode.ok()
        return reading

    def _device_state(
        self, device: GpuDevice, sample: DeviceSample | None, busy: bool, now: float
    ) -> DeviceState:
        last_busy = self._book.observe_device(
            device.device_uuid, busy=busy, now=now, measured_since=self._measured_since
        )
        processes = None
        if sample is not None and sample.processes is not None:
            processes = len(sample.processes)
        return DeviceState(
            device=device,
            activity_ratio=sample.activity_ratio if sample is not None else None,
            processes=processes,
            memory_used_bytes=sample.memory_used_bytes if sample is not None else None,
            busy=busy,
            last_busy=last_busy,
        )

    def _container_states(
        self,
        running: list[KnownContainer],
        samples: Mapping[str, DeviceSample],
        device_busy: Mapping[str, bool],
        now: float,
    ) -> tuple[ContainerState, ...]:
        holders = Counter(d for e in running for d in e.facts.gpu_devices)
        owners = self._process_owners(holders, samples, device_busy)
        at = datetime.fromtimestamp(now, tz=UTC)
        max_age = self._policy.keep_alive.max_age
        granted = self._extensions()
        limits_of: dict[tuple[str, str], Limits] = {}  # one policy lookup per user and type
        states = []
        for entry in running:
            facts = entry.facts
            busy = container_busy(
                container_id=facts.container_id,
                devices=facts.gpu_devices,
                device_busy=device_busy,
                holders=holders,
                process_owners=owners,
            )
            clock = self._book.observe_container(
                facts.container_id,
                started_at=facts.started_at,
                busy=busy,
                now=now,
                measured_since=self._measured_since,
            )
            limits = limits_of.get((facts.user, facts.type))
            if limits is None:
                limits = self._policy.limits_for(facts.user, facts.type, at)
                limits_of[facts.user, facts.type] = limits
            extension = granted.get(facts.container_id, NO_EXTENSION)
            mtime = self._keepalive.mtime(entry, now)
            fresh = keep_alive_fresh(mtime=mtime, now=now, max_age=max_age)
            idle = idle_deadline(
                last_busy=clock.last_busy,
                idle_timeout=limits.idle_timeout,
                idle_exempt=limits.idle_exempt,
                keep_alive=fresh,
                extension=extension.idle,
            )
            runtime = runtime_deadline(
                first_start=clock.first_start,
                max_runtime=limits.max_runtime,
                runtime_exempt=limits.runtime_exempt,
                extension=extension.runtime,
            )
            states.append(
                ContainerState(
                    facts=facts,
                    group=limits.group,
                    busy=busy,
                    first_start=clock.first_start,
                    last_busy=clock.last_busy,
                    keep_alive=fresh,
                    idle_deadline=idle.at,
                    idle_deadline_reason=idle.reason,
                    runtime_deadline=runtime.at,
                    runtime_deadline_reason=runtime.reason,
                    keep_alive_until=mtime + max_age if fresh and mtime is not None else None,
                )
            )
        return tuple(states)

    def _process_owners(
        self,
        holders: Mapping[str, int],
        samples: Mapping[str, DeviceSample],
        device_busy: Mapping[str, bool],
    ) -> dict[str, frozenset[str] | None]:
        """Which containers have a process on each busy device that several containers share."""
        owners: dict[str, frozenset[str] | None] = {}
        for uuid, count in holders.items():
            if count <= 1 or not device_busy.get(uuid, True):
                continue
            sample = samples.get(uuid)
            if sample is None or sample.processes is None:
                owners[uuid] = None
                continue
            found = (self._pid_owner(pid) for pid in sample.process_pids)
            owners[uuid] = frozenset(cid for cid in found if cid)
        return owners

    def _save_state(self, *, now: float | None = None) -> None:
        """Save the clocks: at once when a restart could not rebuild a change, else at most
        every SAVE_EVERY seconds (a save is ~15% of a quiet cycle's CPU); always when `now` is
        None (stopping)."""
        if self._store is None or not self._book.dirty:
            return
        if now is not None and not self._book.urgent and now - self._saved_at < SAVE_EVERY:
            return
        self._saved_at = now if now is not None else self._clock.time()
        try:
            self._store.save(self._book)
        except OSError as exc:
            self._errors.add("state")
            self._state_episode.fail(f"{self._store.path}: {exc}")
        else:
            self._state_episode.ok()
