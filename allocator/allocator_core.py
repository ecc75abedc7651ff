"""The allocator's state and how a decision commits: one lock, one store transaction.

Every decision (quota check, device choice, insert) happens in one store transaction while
the allocator lock is held, so no device is ever in two allocations and no user passes quota.
The layers above add the decisions: `granting` (who gets which free device), `container_sync`
(what Docker's containers do to allocations) and `service` (the requests users make).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ds01.clock import SYSTEM_CLOCK, Clock
from ds01.cluster_policy import effective_node
from ds01.durations import format_duration
from ds01.gpu import GpuBackend
from ds01.policy import Policy

from .history import HistoryLog
from .inventory import CachedInventory, RunningContainers, process_owner
from .metrics import AllocatorMetrics
from .model import AllocatorError, Denial
from .placement import EligibilityCache
from .queue import Waiter, WaitQueue
from .store import AllocationStore, StoreTx, WaitRecord
from .tokens import TokenSource

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    """Tunables that are not policy: ticket grace and inventory refresh, in seconds."""

    ticket_grace: float = 10.0
    inventory_refresh: float = 1.0


class AllocatorCore:
    """What every decision shares: the policy, the queue, the running containers, the
    decision lock and the store transaction a decision commits in."""

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

    def _deny(self, reason: str, message: str, **details: object) -> None:
        self.metrics.denied(reason)
        logger.info("denied reason=%s: %s", reason, message.splitlines()[0])
        raise AllocatorError(Denial(reason, message, dict(details)))

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
