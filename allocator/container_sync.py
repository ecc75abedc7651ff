"""Following Docker: container events and reconciles move allocations; foreign GPU
containers are adopted (given a bound allocation) when `adoption.decide_adoption` allows.

A device that a running container uses is never granted, adopted or not.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import replace

from ds01.gpu import GpuReading

from .adoption import adopted_allocation, decide_adoption, first_come, foreign_containers
from .granting import Granting
from .lifecycle import ContainerEvent, ContainerView, reconcile, transition
from .model import Allocation
from .store import StoreTx
from .store_retry import replay_lost_races

logger = logging.getLogger(__name__)


class ContainerSync(Granting):
    """Allocations follow their containers: started, stopped, removed, or never asked for."""

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
