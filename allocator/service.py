"""The allocator: quota, placement and the FIFO queue decided together under one writer lock.

Every decision (quota check, device choice, insert) happens in one store transaction while
the allocator lock is held, so no device is ever in two allocations and no user passes quota.
A device that a running container uses is never granted; a GPU container that bypassed the
allocator is adopted (given a bound allocation) when `adoption.decide_adoption` allows it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ds01.clock import SYSTEM_CLOCK, Clock
from ds01.cluster_policy import effective_node
from ds01.durations import format_duration
from ds01.gpu import GpuBackend, GpuDevice, GpuReading
from ds01.policy import GroupPolicy, Policy

from .adoption import adopted_allocation, decide_adoption, first_come, foreign_containers
from .advice import device_names, wait_failed_message
from .history import HistoryLog
from .inventory import CachedInventory, RunningContainers, process_owner
from .lifecycle import ContainerEvent, ContainerView, reconcile, released, transition
from .metrics import AllocatorMetrics, AllocatorSnapshot
from .model import (
    HELD,
    RESERVED,
    Allocation,
    AllocationRequest,
    AllocatorError,
    Denial,
)
from .placement import EligibilityCache, feasibility, usable_by
from .queue import Candidate, Waiter, WaitQueue, plan_fifo
from .quota import check_quota
from .store import AllocationStore, StoreTx, WaitRecord
from .store_retry import replay_lost_races
from .tokens import TokenSource

logger = logging.getLogger(__name__)


class NotFound(LookupError):
    """No such allocation or ticket."""


class Forbidden(PermissionError):
    """The caller does not own it."""


@dataclass(frozen=True)
class Settings:
    """Tunables that are not policy: ticket grace and inventory refresh, in seconds."""

    ticket_grace: float = 10.0
    inventory_refresh: float = 1.0


class Allocator:
    def __init__(
        self,
        *,
        store: AllocationStore,
        backend: GpuBackend,
        policy: Policy,
        clock: Clock = SYSTEM_CLOCK,
        metrics: AllocatorMetrics | None = None,
        settings: Settings = Settings(),
        owner_of_pid: Callable[[int], str | None] = process_owner,
        history: HistoryLog | None = None,
    ) -> None:
        self.store, self.policy, self.clock = store, policy, clock
        self.metrics = metrics or AllocatorMetrics(None)
        self.settings = settings
        self.inventory = CachedInventory(
            backend, settings.inventory_refresh, on_error=lambda: self.metrics.count_error("gpu")
        )
        self.owner_of_pid = owner_of_pid
        self.queue = WaitQueue()
        self.placement = EligibilityCache()  # per inventory reading: asked on every request
        self.running = RunningContainers()  # guarded by _lock
        self.history = history or HistoryLog(None)  # grants and waits, for `container history`
        self._lock = threading.RLock()
        self._tokens = TokenSource()  # allocation ids and tickets
        # This node's name: its allocations are the ones reconcile, expiry and adoption touch.
        self.node = store.node or effective_node(policy.services.node)
        self._shared = store.shared  # a cluster store: other allocators write too
        self._published: tuple[WaitRecord, ...] | None = None  # waits other nodes see

    @property
    def lock(self) -> threading.RLock:
        """The decision lock (taken before a store transaction), for desks beside this one."""
        return self._lock

    # --- requests ---------------------------------------------------------------------------

    @replay_lost_races
    def submit(self, request: AllocationRequest, *, wait: bool = True) -> Allocation | Waiter:
        """Grant now, or return the queued Waiter; raise AllocatorError for a refusal."""
        if request.count < 1:
            self._deny("invalid", "count must be at least 1")
        group = self.policy.group_of(request.user)
        reading = self.inventory.current()
        eligible = self.placement.eligible(
            reading.devices,
            profile=request.profile,
            full_gpu=request.full_gpu,
            allow_full_gpu=group.allow_full_gpu,
        )
        verdict = feasibility(
            reading.devices,
            count=request.count,
            profile=request.profile,
            full_gpu=request.full_gpu,
            allow_full_gpu=group.allow_full_gpu,
            group=group.name,
            eligible=eligible,
        )
        if not verdict.ok:
            self._deny(verdict.reason, verdict.message)
        with self._lock:
            now = self.clock.time()  # inside the lock: times follow commit order
            with self._transaction() as tx:
                live = tx.live()
                self._check_quota(tx, request, group, now)
                granted = None
                if not len(self.queue):  # nobody ahead: no ticket unless it has to wait
                    granted = self._grant(tx, request, group.name, eligible, reading, live, now)
                if granted is None:
                    waiter = self._enqueue(request, group.name, now)
                    woken = self._serve(tx, live, reading, now)
                    if not waiter.resolved and not wait:
                        self.queue.drop(waiter.ticket, self.clock.time())
            if granted is not None:
                alloc, record = granted
                self.history.write(**record)  # after the commit, as _wake does for waiters
                return alloc
            if isinstance(waiter.outcome, Allocation) or not (wait or waiter.resolved):
                self.queue.forget(waiter.ticket)  # answered now: the ticket is never shown
            self._wake(woken)
        if isinstance(waiter.outcome, Allocation):
            return waiter.outcome
        if not wait:
            self._deny("no_capacity", "no free device matches the request right now")
        position = self.queue.position(waiter.ticket)
        logger.info(
            "queued ticket=%s user=%s count=%d profile=%s position=%d",
            waiter.ticket,
            request.user,
            request.count,
            request.profile or "-",
            position,
        )
        self.history.write(
            at=waiter.enqueued_at,
            event="wait",
            user=request.user,
            container=request.container_name,
            decision="queued",
            detail=f"no free device for {request.count} ({request.profile or 'any profile'}); "
            f"position {position}, waits up to {format_duration(self.policy.gpu_wait)}",
        )
        return waiter

    def _check_quota(
        self, tx: StoreTx, request: AllocationRequest, group: GroupPolicy, now: float
    ) -> None:
        """Refuse (AllocatorError) a request that would take the user past the group's quota,
        counting what they hold and wait for on every node."""
        by_node = tx.holdings(request.user)  # every node's: the quota is cluster-wide
        holding = sum(by_node.values())
        waiting = self.queue.waiting_for(request.user) + sum(
            tx.waiting_elsewhere(request.user, now).values()
        )
        quota = check_quota(
            user=request.user,
            group=group.name,
            max_gpus=group.max_gpus,
            holding=holding,
            waiting=waiting,
            count=request.count,
            by_node=by_node if self._shared else None,
        )
        if not quota.allowed:
            self._deny(
                "quota",
                quota.message,
                holding=holding,
                waiting=waiting,
                max_gpus=group.max_gpus,
                holding_by_node=by_node,
            )

    def _enqueue(self, request: AllocationRequest, group: str, now: float) -> Waiter:
        waiter = Waiter(
            ticket=f"t-{self._tokens.hex(8)}",
            request=request,
            group=group,
            enqueued_at=now,
            deadline=now + self.policy.gpu_wait,
            last_seen=now,
        )
        self.queue.add(waiter)
        return waiter

    def wait(
        self,
        ticket: str,
        timeout: float,
        *,
        user: str,
        admin: bool = False,
        disconnected: Callable[[], bool] | None = None,
    ) -> Waiter | None:
        """Block until the ticket is resolved or `timeout` passes; None if the client left."""
        with self._lock:
            waiter = self._ticket(ticket, user, admin)
            waiter.attached += 1
        try:
            end = time.monotonic() + max(0.0, timeout)
            while not waiter.event.is_set():
                left = end - time.monotonic()
                if left <= 0:
                    break
                if waiter.event.wait(min(0.05, left)):
                    break
                if disconnected is not None and disconnected():
                    self._drop(waiter, "client disconnected")
                    return None
        finally:
            with self._lock:
                waiter.attached -= 1
                waiter.last_seen = self.clock.time()
        return waiter

    def position(self, ticket: str) -> int:
        with self._lock:
            return self.queue.position(ticket)

    def cancel(self, ticket: str, *, user: str, admin: bool = False) -> None:
        with self._lock:
            waiter = self._ticket(ticket, user, admin)
            if not waiter.resolved:
                self._drop(waiter, "cancelled by the client")

    @replay_lost_races
    def release(
        self, allocation_id: str, *, user: str, admin: bool = False, reason: str = "released"
    ) -> Allocation:
        """Free an allocation's devices now (idempotent) and serve the queue."""
        reading = self.inventory.current()
        with self._lock:
            now = self.clock.time()  # inside the lock: times follow commit order
            with self._transaction() as tx:
                alloc = tx.get(allocation_id)
                if alloc is None:
                    raise NotFound(f"no allocation {allocation_id}")
                if not admin and alloc.user != user:
                    raise Forbidden(f"allocation {allocation_id} belongs to {alloc.user}")
                if not alloc.live:
                    return alloc
                done = released(alloc, at=now, reason=reason)
                tx.update(done)
                logger.info(
                    "released allocation=%s user=%s devices=%s reason=%s",
                    alloc.id,
                    alloc.user,
                    ",".join(alloc.devices),
                    reason,
                )
                self._adopt_foreign(tx, reading, now)
                woken = self._serve(tx, tx.live(), reading, now) if len(self.queue) else []
            self._wake(woken)
        return done

    @replay_lost_races
    def get(self, allocation_id: str, *, user: str, admin: bool = False) -> Allocation:
        with self._lock, self._transaction() as tx:
            alloc = tx.get(allocation_id)
        if alloc is None:
            raise NotFound(f"no allocation {allocation_id}")
        if not admin and alloc.user != user:
            raise Forbidden(f"allocation {allocation_id} belongs to {alloc.user}")
        return alloc

    @replay_lost_races
    def live(self, user: str | None = None) -> list[Allocation]:
        with self._lock, self._transaction() as tx:
            allocations = tx.live()
        return [a for a in allocations if user is None or a.user == user]

    def usage(self, user: str) -> dict:
        """The user's numbers against the quota (every node's) and this node's allocations."""
        group = self.policy.group_of(user)
        mine = self.live(user)
        by_node, elsewhere = self._cluster_usage(user)
        with self._lock:
            waiting = self.queue.waiting_for(user)
        return {
            "user": user,
            "group": group.name,
            "node": self.node,
            "holding": sum(by_node.values()),
            "holding_by_node": by_node,
            "waiting": waiting + sum(elsewhere.values()),
            "max_gpus": group.max_gpus,
            "allow_full_gpu": group.allow_full_gpu,
            "allocations": [a.to_json() for a in mine],
            "gpu_wait": self.policy.gpu_wait,
            "gpu_hold_after_stop": self.policy.gpu_hold_after_stop,
        }

    @replay_lost_races
    def _cluster_usage(self, user: str) -> tuple[dict[str, int], dict[str, int]]:
        with self._lock, self._transaction() as tx:
            return tx.holdings(user), tx.waiting_elsewhere(user, self.clock.time())

    def devices(self) -> list[dict]:
        """Every device with its holder and state (free, busy, reserved, bound, held, vanished).

        `busy`: compute processes, or a running container that no allocation gives it.
        """
        reading = self.inventory.current()
        holders = {uuid: a for a in self.live() for uuid in a.devices}
        with self._lock:
            in_use = self.running.devices()
        rows = []
        for device in reading.devices:
            alloc = holders.pop(device.device_uuid, None)
            sample = reading.samples.get(device.device_uuid)
            pids = list(sample.process_pids) if sample else []
            foreign = None if alloc else in_use.get(device.device_uuid)
            state = alloc.state if alloc else ("busy" if pids or foreign else "free")
            holder = alloc or foreign
            rows.append(
                {
                    "device_uuid": device.device_uuid,
                    "index": device.index,
                    "kind": device.kind,
                    "profile": device.profile,
                    "model": device.model,
                    "state": state,
                    "allocation": alloc.id if alloc else "",
                    "user": holder.user if holder else "",
                    "container_id": holder.container_id if holder else "",
                    "container_name": (
                        alloc.container_name if alloc else foreign.name if foreign else ""
                    ),
                    "pids": pids,
                }
            )
        for gone_uuid, alloc in holders.items():
            rows.append(
                {
                    "device_uuid": gone_uuid,
                    "index": "",
                    "kind": "",
                    "profile": "",
                    "model": "",
                    "state": "vanished",
                    "allocation": alloc.id,
                    "user": alloc.user,
                    "container_id": alloc.container_id,
                    "container_name": alloc.container_name,
                    "pids": [],
                }
            )
        return rows

    # --- lifecycle --------------------------------------------------------------------------

    @replay_lost_races
    def apply_event(self, event: ContainerEvent) -> Allocation | None:
        """Apply one Docker container event: move the allocation bound to the container (by id)
        or named by its label, track running GPU containers, adopt foreign ones."""
        reading = self.inventory.current()
        view = event.container
        with self._lock:
            with self._transaction() as tx:
                now = self.clock.time()
                alloc = self._allocation_of(tx, view)
                changed = None
                if alloc is not None:
                    changed = transition(alloc, event, hold=self.policy.gpu_hold_after_stop)
                    if changed is not None:
                        tx.update(changed)
                        logger.info(
                            "allocation=%s %s -> %s container=%s event=%s",
                            alloc.id,
                            alloc.state,
                            changed.state,
                            view.short_id,
                            event.action,
                        )
                    elif alloc.live and view.user != alloc.user and not self._bound_to(alloc, view):
                        logger.warning(
                            "container %s (user %r) claims allocation %s of %s; ignored",
                            view.short_id,
                            view.user,
                            alloc.id,
                            alloc.user,
                        )
                self.running.follow(event)
                adopted = self._adopt_foreign(tx, reading, now)
                woken = self._serve(tx, tx.live(), reading, now) if len(self.queue) else []
            self._wake(woken)
        if changed is None:
            return next((a for a in adopted if a.container_id == view.container_id), None)
        return changed

    @replay_lost_races
    def reconcile(self, containers: Iterable[ContainerView]) -> int:
        """Bring the store in line with Docker's containers and the GPU inventory; adopt."""
        views = list(containers)
        by_allocation: dict[str, ContainerView] = {}
        for view in views:
            if view.allocation:
                by_allocation.setdefault(view.allocation, view)
        by_container = {v.container_id: v for v in views}
        reading = self.inventory.current()
        present = {d.device_uuid for d in reading.devices}
        with self._lock:
            now = self.clock.time()  # inside the lock: times follow commit order
            with self._transaction() as tx:
                live = tx.live()
                changes = reconcile(
                    live,
                    by_allocation,
                    now=now,
                    hold=self.policy.gpu_hold_after_stop,
                    by_container=by_container,
                )
                changed_ids = {c.id for c in changes}
                for alloc in live:
                    gone = tuple(u for u in alloc.devices if u not in present)
                    if gone != alloc.vanished and alloc.id not in changed_ids:
                        changes.append(replace(alloc, vanished=gone))
                    elif alloc.id in changed_ids:
                        index = next(i for i, c in enumerate(changes) if c.id == alloc.id)
                        changes[index] = replace(changes[index], vanished=gone)
                for change in changes:
                    tx.update(change)
                    if change.vanished:
                        logger.warning(
                            "allocation=%s holds devices missing from the inventory: %s",
                            change.id,
                            ",".join(change.vanished),
                        )
                self.running.replace_all(views)
                adopted = self._adopt_foreign(tx, reading, now)
                woken = self._serve(tx, tx.live(), reading, now)
                running = len(self.running.views())
            self._wake(woken)
        logger.info(
            "reconciled: %d live allocations, %d changed, %d adopted, %d running GPU containers",
            len(live),
            len(changes),
            len(adopted),
            running,
        )
        return len(changes) + len(adopted)

    @replay_lost_races
    def tick(self) -> None:
        """Expire reservations, holds and overdue or abandoned tickets; serve the queue."""
        reading = self.inventory.current()
        with self._lock:
            now = self.clock.time()  # inside the lock: times follow commit order
            with self._transaction() as tx:
                live = tx.live()
                for alloc in live:
                    if alloc.expires_at is None or now < alloc.expires_at:
                        continue
                    if alloc.state in (RESERVED, HELD):
                        reason = (
                            "reservation_expired" if alloc.state == RESERVED else "hold_expired"
                        )
                        tx.update(released(alloc, at=now, reason=reason))
                        logger.info(
                            "released allocation=%s user=%s reason=%s", alloc.id, alloc.user, reason
                        )
                woken = []
                for waiter in self.queue.overdue(now):
                    message = wait_failed_message(
                        self.policy.gpu_wait,
                        holding=sum(len(a.devices) for a in live if a.user == waiter.request.user),
                        hold_after_stop=self.policy.gpu_hold_after_stop,
                    )
                    self.queue.resolve(waiter.ticket, Denial("timeout", message), now)
                    self.metrics.denied("timeout", now - waiter.enqueued_at)
                    woken.append(waiter)
                    logger.info("timed out ticket=%s user=%s", waiter.ticket, waiter.request.user)
                    self._wait_ended(waiter, "timed out", message.splitlines()[0], now)
                for waiter in self.queue.abandoned(now, self.settings.ticket_grace):
                    self._drop(waiter, "not polled for too long")
                self.queue.forget_old(now)
                self._adopt_foreign(tx, reading, now)
                woken += self._serve(tx, tx.live(), reading, now)
            self._wake(woken)

    def snapshot(self) -> AllocatorSnapshot:
        reading = self.inventory.current()
        allocations = tuple(self.live())
        with self._lock:
            length = len(self.queue)
            in_use = self.running.devices()
        held = {u for a in allocations for u in a.devices} | set(in_use)
        free: dict[str, int] = {d.profile: 0 for d in reading.devices}
        for device in reading.devices:
            sample = reading.samples.get(device.device_uuid)
            if device.device_uuid not in held and not (sample and sample.process_pids):
                free[device.profile] += 1
        return AllocatorSnapshot(allocations, length, free)

    # --- internals --------------------------------------------------------------------------

    def _deny(self, reason: str, message: str, **details: object) -> None:
        self.metrics.denied(reason)
        logger.info("denied reason=%s: %s", reason, message.splitlines()[0])
        raise AllocatorError(Denial(reason, message, dict(details)))

    def _ticket(self, ticket: str, user: str, admin: bool) -> Waiter:
        waiter = self.queue.get(ticket)
        if waiter is None:
            raise NotFound(f"no ticket {ticket} (it expired, or the allocator restarted)")
        if not admin and waiter.request.user != user:
            raise Forbidden(f"ticket {ticket} belongs to {waiter.request.user}")
        return waiter

    def _drop(self, waiter: Waiter, why: str) -> None:
        with self._lock:
            if self.queue.drop(waiter.ticket, self.clock.time()) is not None:
                logger.info(
                    "left queue ticket=%s user=%s: %s", waiter.ticket, waiter.request.user, why
                )
                self._wait_ended(waiter, "left the queue", why, self.clock.time())

    def _wait_ended(self, waiter: Waiter, decision: str, why: str, now: float) -> None:
        waited = format_duration(now - waiter.enqueued_at)
        self.history.write(
            at=now,
            event="wait",
            user=waiter.request.user,
            container=waiter.request.container_name,
            decision=decision,
            detail=f"{why} (waited {waited})",
        )

    def _wake(self, waiters: list[Waiter]) -> None:
        """After the commit (never for a rolled-back decision): the grant lines go to the
        history, then the waiters learn their outcome."""
        for waiter in waiters:
            if waiter.history is not None:
                self.history.write(**waiter.history)
                waiter.history = None
            waiter.event.set()

    def _transaction(self) -> contextlib.AbstractContextManager[StoreTx]:
        """A store transaction; with a shared store, a rollback also rolls back the queue (so
        a replay after a lost race decides again from the same waiters) and this node's
        published waits are brought up to date before the commit."""
        if not self._shared:
            return self.store.transaction()  # one node: nothing to add (nor to pay for)
        return self._shared_transaction()

    @contextlib.contextmanager
    def _shared_transaction(self) -> Iterator[StoreTx]:
        mark, published = self.queue.checkpoint(), self._published
        try:
            with self.store.transaction() as tx:
                yield tx
                self._publish_waits(tx)
        except BaseException:
            self.queue.restore(mark)
            self._published = published
            raise

    def _publish_waits(self, tx: StoreTx) -> None:
        """Tell the other nodes what this node's users wait for (their quota counts it)."""
        waits = tuple(
            WaitRecord(w.ticket, w.request.user, w.request.count, w.deadline) for w in self.queue
        )
        if waits != self._published:
            tx.publish_waits(waits)
            self._published = waits

    def _serve(
        self, tx: StoreTx, live: list[Allocation], reading: GpuReading, now: float
    ) -> list[Waiter]:
        """Grant what the FIFO plan allows, inside the caller's transaction; returns the woken."""
        if not len(self.queue):
            return []
        held = self._held(live)
        free = [d.device_uuid for d in reading.devices if d.device_uuid not in held]
        owners = self._process_owners(reading, free)
        waiters = list(self.queue)
        candidates = []
        for waiter in waiters:
            req = waiter.request
            group = self.policy.group_of(req.user)
            eligible = self.placement.eligible(
                reading.devices,
                profile=req.profile,
                full_gpu=req.full_gpu,
                allow_full_gpu=group.allow_full_gpu,
            )
            usable = usable_by((d.device_uuid for d in eligible), req.user, owners)
            candidates.append(Candidate(waiter.ticket, req.count, usable))
        woken = []
        holding: dict[str, int] = {}
        counted: set[str] = set()  # users whose cluster-wide holdings were read
        for alloc in live:
            holding[alloc.user] = holding.get(alloc.user, 0) + len(alloc.devices)
        for ticket, devices in plan_fifo(candidates, free):
            waiter = next(w for w in waiters if w.ticket == ticket)
            req = waiter.request
            limit = self.policy.group_of(req.user).max_gpus
            if self._shared and req.user not in counted:
                holding[req.user] = sum(tx.holdings(req.user).values())  # every node's
                counted.add(req.user)
            if limit is not None and holding.get(req.user, 0) + req.count > limit:
                denial = Denial("quota", f"GPU quota exceeded for {req.user} while waiting")
                self.queue.resolve(ticket, denial, now)
                self.metrics.denied("quota", now - waiter.enqueued_at)
                woken.append(waiter)
                continue
            alloc, record = self._insert_grant(
                tx, req, waiter.group, devices, reading, waiter.enqueued_at, now
            )
            waiter.history = record  # written by _wake, once the grant is committed
            holding[req.user] = holding.get(req.user, 0) + req.count
            self.queue.resolve(ticket, alloc, now)
            woken.append(waiter)
        return woken

    def _grant(
        self,
        tx: StoreTx,
        request: AllocationRequest,
        group: str,
        eligible: Sequence[GpuDevice],
        reading: GpuReading,
        live: list[Allocation],
        now: float,
    ) -> tuple[Allocation, dict[str, Any]] | None:
        """With nobody waiting, the FIFO plan of one: the first usable free devices among
        `eligible`, granted without a ticket; None when too few are free (it queues)."""
        held = self._held(live)
        free = [d.device_uuid for d in eligible if d.device_uuid not in held]
        usable = usable_by(free, request.user, self._process_owners(reading, free))
        if len(usable) < request.count:
            return None
        return self._insert_grant(tx, request, group, usable[: request.count], reading, now, now)

    def _insert_grant(
        self,
        tx: StoreTx,
        req: AllocationRequest,
        group: str,
        devices: tuple[str, ...],
        reading: GpuReading,
        enqueued_at: float,
        now: float,
    ) -> tuple[Allocation, dict[str, Any]]:
        """A reserved allocation of `devices`, inserted; with the history record to write
        once the transaction has committed."""
        alloc = Allocation(
            id=self._tokens.hex(8),
            user=req.user,
            group=group,
            devices=devices,
            state=RESERVED,
            created_at=now,
            expires_at=now + self.policy.reservation_ttl,
            container_name=req.container_name,
            container_type=req.container_type,
            profile=req.profile or "",
            node=self.node,
        )
        tx.insert(alloc)
        waited = now - enqueued_at
        self.metrics.granted(waited)
        logger.info(
            "granted allocation=%s user=%s devices=%s waited=%.3fs",
            alloc.id,
            req.user,
            ",".join(devices),
            waited,
        )
        record = {
            "at": now,
            "event": "grant",
            "user": req.user,
            "container": req.container_name,
            "decision": "granted",
            "detail": device_names(reading, devices)
            + (f" after waiting {format_duration(waited)}" if waited >= 1 else ""),
        }
        return alloc, record

    def _held(self, live: list[Allocation]) -> set[str]:
        """Devices not free: in a live allocation, or used by a running container."""
        held = {u for a in live for u in a.devices}
        held.update(self.running.devices())
        return held

    @staticmethod
    def _bound_to(alloc: Allocation, view: ContainerView) -> bool:
        return bool(alloc.container_id) and alloc.container_id == view.container_id

    def _allocation_of(self, tx: StoreTx, view: ContainerView) -> Allocation | None:
        """The live allocation bound to this container id, else the one its label names."""
        if view.container_id:
            for alloc in tx.live():
                if alloc.container_id == view.container_id:
                    return alloc
        return tx.get(view.allocation) if view.allocation else None

    def _adopt_foreign(self, tx: StoreTx, reading: GpuReading, now: float) -> list[Allocation]:
        """Give each running GPU container that no allocation is bound to a bound allocation,
        when `decide_adoption` allows; first started first. Re-run after every change."""
        running = first_come(self.running.views())
        if not running:
            return []
        live = tx.live()
        if not foreign_containers(running, live):
            return []
        bound = {a.container_id for a in live if a.container_id}
        adopted: list[Allocation] = []
        for position, view in enumerate(running):
            if view.container_id in bound:
                continue
            group = self.policy.group_of(view.user)
            decision = decide_adoption(
                container=view,
                live=live,
                inventory=reading.devices,
                earlier=running[:position],
                group=group.name,
                max_gpus=group.max_gpus,
                allow_full_gpu=group.allow_full_gpu,
                waiting=self.queue.waiting_for(view.user)
                + self._waits_elsewhere(tx, view.user, now),
                holding_elsewhere=self._held_elsewhere(tx, view.user),
            )
            if not decision.adopt:
                self._note_refusal(view, decision.reason)
                continue
            alloc = adopted_allocation(
                container=view,
                devices=decision.devices,
                group=group.name,
                allocation_id=self._tokens.hex(8),
                now=now,
            )
            tx.insert(alloc)
            live.append(alloc)
            adopted.append(alloc)
            self.running.adopted(view.container_id)
            self.metrics.adoption("adopted")
            logger.info(
                "adopted container=%s name=%s user=%s type=%s allocation=%s devices=%s: %s",
                view.short_id,
                view.name,
                view.user,
                view.container_type,
                alloc.id,
                ",".join(alloc.devices),
                decision.reason,
            )
        return adopted

    def _held_elsewhere(self, tx: StoreTx, user: str) -> int:
        """The user's devices on other nodes (0 for a single node's store)."""
        if not self._shared:
            return 0
        return sum(n for node, n in tx.holdings(user).items() if node != self.node)

    def _waits_elsewhere(self, tx: StoreTx, user: str, now: float) -> int:
        return sum(tx.waiting_elsewhere(user, now).values()) if self._shared else 0

    def _note_refusal(self, view: ContainerView, reason: str) -> None:
        """Count a refusal once per container start; log it again only when the reason changes."""
        first, changed = self.running.refused(view.container_id, reason)
        if first:
            self.metrics.adoption("refused")
        if changed:
            logger.warning(
                "not adopting container=%s name=%s user=%s: %s; it stays unmanaged and its "
                "devices are not granted while it runs",
                view.short_id,
                view.name,
                view.user,
                reason,
            )

    def _process_owners(self, reading: GpuReading, uuids: list[str]) -> dict[str, set[str]]:
        """For free devices with compute processes: who runs them ("?" when unknown)."""
        owners: dict[str, set[str]] = {}
        for uuid_ in uuids:
            sample = reading.samples.get(uuid_)
            if sample is not None and sample.processes:  # no tuple built for idle devices
                owners[uuid_] = {self.owner_of_pid(pid) or "?" for pid in sample.process_pids}
        return owners
