"""Grants `container extend` requests: finds the caller's own container among the live
allocations, decides within the group's bounds, records the grant and republishes the totals.

The allocator is the one writer with durable state and knows the caller from the socket, so
the extension store lives in its database; the exporter reads the totals file it writes.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from .extensions import KINDS, Extension, decide_extension, write_totals
from .model import BOUND, HELD, Allocation, AllocatorError, Denial
from .service import Allocator, NotFound

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExtensionGrant:
    extension: Extension
    total_seconds: float  # of this kind on this container, the new one included
    count: int  # extensions of any kind on this container, the new one included


def _matches(alloc: Allocation, container: str) -> bool:
    name = alloc.container_name.lstrip("/")
    if container.lstrip("/") == name and name:
        return True
    return len(container) >= 12 and alloc.container_id.startswith(container)


def others_waiting(allocator: Allocator, alloc: Allocation) -> int:
    """Queued requests of other users that could use a device of this allocation's type."""
    return sum(
        1
        for waiter in allocator.queue
        if waiter.request.user != alloc.user
        and (waiter.request.profile is None or waiter.request.profile == alloc.profile)
    )


class ExtensionDesk:
    """The one place extensions are granted (under the allocator's lock, in one transaction)."""

    def __init__(self, allocator: Allocator, totals_path: str | os.PathLike[str]) -> None:
        self.allocator = allocator
        self.totals_path = Path(totals_path)
        # Read and write under one lock: a publish that read older rows never lands last.
        self._publish_lock = threading.Lock()

    def active(self, user: str | None = None) -> list[Extension]:
        """Extensions of live allocations (all users when `user` is None)."""
        with self.allocator.lock, self.allocator.store.transaction() as tx:
            live = [a.id for a in tx.live() if user is None or a.user == user]
            return tx.extensions(live)

    def publish(self) -> None:
        """Rewrite the totals file from the database (at start, after a grant, periodically)."""
        with self._publish_lock:
            write_totals(self.totals_path, self.active())

    def extend(
        self, *, user: str, container: str, seconds: float | None, kind: str
    ) -> ExtensionGrant:
        """Grant or raise AllocatorError (refused, with the numbers) / NotFound."""
        if kind not in KINDS:
            raise ValueError(f"kind: must be one of {', '.join(KINDS)}, got {kind!r}")
        allocator = self.allocator
        with allocator.lock:
            now = allocator.clock.time()
            with allocator.store.transaction() as tx:
                mine = [
                    a
                    for a in tx.live()
                    if a.user == user and a.state in (BOUND, HELD) and _matches(a, container)
                ]
                if not mine:
                    raise NotFound(f"no GPU container of yours named {container!r}")
                alloc = mine[0]
                group = allocator.policy.group_of(user)
                earlier = tx.extensions([alloc.id])
                asked = seconds if seconds is not None else group.extensions.default_each
                decision = decide_extension(
                    seconds=asked,
                    bounds=group.extensions,
                    group=group.name,
                    earlier=earlier,
                    others_waiting=others_waiting(allocator, alloc),
                )
                if not decision.granted:
                    allocator.metrics.extensions.labels(kind=kind, result="refused").inc()
                    logger.info(
                        "extension refused user=%s container=%s kind=%s seconds=%g: %s",
                        user,
                        alloc.container_name,
                        kind,
                        asked,
                        decision.reason,
                    )
                    details = dict(decision.details, container=alloc.container_name)
                    raise AllocatorError(Denial("extension_refused", decision.reason, details))
                ext = Extension(
                    container_id=alloc.container_id,
                    container_name=alloc.container_name.lstrip("/"),
                    allocation_id=alloc.id,
                    user=user,
                    kind=kind,
                    seconds=asked,
                    granted_at=now,
                )
                tx.add_extension(ext)
            allocator.metrics.extensions.labels(kind=kind, result="granted").inc()
        total = sum(e.seconds for e in earlier if e.kind == kind) + asked
        logger.info(
            "extension granted user=%s container=%s id=%s kind=%s seconds=%g total=%g count=%d",
            user,
            ext.container_name,
            ext.container_id[:12],
            kind,
            asked,
            total,
            len(earlier) + 1,
        )
        self.publish()
        return ExtensionGrant(ext, total, len(earlier) + 1)
