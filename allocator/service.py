"""The allocator users talk to: ask, wait, release, look; and the clock's tick.

Quota, placement and the FIFO queue are decided together under one writer lock, in one store
transaction (`allocator_core`); grants come from `granting`, what Docker's containers do to
allocations from `container_sync`. This layer checks who may do what and when.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from ds01.durations import format_duration
from ds01.policy import GroupPolicy

from .advice import wait_failed_message
from .allocator_core import Settings
from .container_sync import ContainerSync
from .device_table import device_rows
from .lifecycle import released
from .metrics import AllocatorSnapshot
from .model import HELD, RESERVED, Allocation, AllocationRequest, Denial
from .placement import feasibility
from .queue import Waiter
from .quota import check_quota
from .store import StoreTx
from .store_retry import replay_lost_races

__all__ = ["Allocator", "Forbidden", "NotFound", "Settings", "wait_failed_message"]

logger = logging.getLogger(__name__)


class NotFound(LookupError):
    """No such allocation or ticket."""


class Forbidden(PermissionError):
    """The caller does not own it."""


class Allocator(ContainerSync):
    """The allocator users talk to: requests, waits, releases, views and the clock's tick."""

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
        """Every device with its holder and state (see `device_table.device_rows`)."""
        reading = self.inventory.current()
        live = self.live()
        with self._lock:
            in_use = self.running.devices()
        return device_rows(reading, live, in_use)

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

    # --- time -------------------------------------------------------------------------------

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

    # --- internals --------------------------------------------------------------------------

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
