"""The wait queue: strict FIFO among requests that compete for the same devices.

`plan_fifo` is the pure decision; `WaitQueue` keeps the tickets (guarded by the allocator's
lock) and wakes a waiter through its own Event the moment its ticket is resolved.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from .model import Allocation, AllocationRequest, Denial


@dataclass(frozen=True)
class Candidate:
    """A waiting request as the planner sees it: `eligible` is already in placement order."""

    ticket: str
    count: int
    eligible: tuple[str, ...]


def plan_fifo(
    candidates: Sequence[Candidate], free: Collection[str]
) -> list[tuple[str, tuple[str, ...]]]:
    """Grants (ticket, devices) in queue order; an unserved waiter keeps its claim on the free
    devices it could use, so nobody behind it that competes for them can jump ahead."""
    remaining = set(free)
    grants: list[tuple[str, tuple[str, ...]]] = []
    for candidate in candidates:
        usable = [uuid for uuid in candidate.eligible if uuid in remaining]
        if len(usable) >= candidate.count:
            take = tuple(usable[: candidate.count])
            grants.append((candidate.ticket, take))
            remaining.difference_update(take)
        else:
            remaining.difference_update(usable)
    return grants


@dataclass(eq=False)
class Waiter:
    """One queued request (mutable, owned by the queue)."""

    ticket: str
    request: AllocationRequest
    group: str
    enqueued_at: float
    deadline: float
    event: threading.Event = field(default_factory=threading.Event)
    outcome: Allocation | Denial | None = None
    resolved_at: float | None = None
    attached: int = 0  # polls in progress
    last_seen: float = 0.0
    history: dict[str, Any] | None = None  # the grant's history record, until committed

    @property
    def resolved(self) -> bool:
        return self.outcome is not None


@dataclass(frozen=True)
class QueueMark:
    waiting: dict[str, Waiter]
    resolved: dict[str, Waiter]
    outcomes: dict[str, tuple[Allocation | Denial | None, float | None]]


class WaitQueue:
    """Tickets in arrival order; resolved ones are kept a while so a late poll still learns."""

    def __init__(self, keep_resolved: float = 60.0) -> None:
        self._waiting: dict[str, Waiter] = {}  # insertion order = FIFO order
        self._resolved: dict[str, Waiter] = {}
        self.keep_resolved = keep_resolved

    def __len__(self) -> int:
        return len(self._waiting)

    def __iter__(self) -> Iterator[Waiter]:
        return iter(list(self._waiting.values()))

    def add(self, waiter: Waiter) -> None:
        self._waiting[waiter.ticket] = waiter

    def get(self, ticket: str) -> Waiter | None:
        return self._waiting.get(ticket) or self._resolved.get(ticket)

    def position(self, ticket: str) -> int:
        """1-based place in the queue, 0 when not waiting."""
        for place, key in enumerate(self._waiting, start=1):
            if key == ticket:
                return place
        return 0

    def waiting_for(self, user: str) -> int:
        """Devices this user already waits for (counted against the quota)."""
        return sum(w.request.count for w in self._waiting.values() if w.request.user == user)

    def resolve(self, ticket: str, outcome: Allocation | Denial, at: float) -> Waiter | None:
        waiter = self._waiting.pop(ticket, None)
        if waiter is None:
            return None
        waiter.outcome, waiter.resolved_at = outcome, at
        self._resolved[ticket] = waiter
        return waiter  # the caller sets waiter.event once its transaction has committed

    def drop(self, ticket: str, at: float) -> Waiter | None:
        """Remove without an outcome (the client left); a late poll learns it was cancelled."""
        waiter = self._waiting.pop(ticket, None)
        if waiter is not None:
            waiter.resolved_at = at
            self._resolved[ticket] = waiter
            waiter.event.set()
        return waiter

    def overdue(self, now: float) -> list[Waiter]:
        return [w for w in self._waiting.values() if now >= w.deadline]

    def abandoned(self, now: float, grace: float) -> list[Waiter]:
        return [w for w in self._waiting.values() if w.attached == 0 and now - w.last_seen > grace]

    def checkpoint(self) -> QueueMark:
        """The queue as it is now, to put back if the transaction deciding on it rolls back."""
        return QueueMark(
            dict(self._waiting),
            dict(self._resolved),
            {t: (w.outcome, w.resolved_at) for t, w in self._waiting.items()},
        )

    def restore(self, mark: QueueMark) -> None:
        """Undo what happened since `mark` (a rolled-back grant is waiting again)."""
        self._waiting, self._resolved = dict(mark.waiting), dict(mark.resolved)
        for ticket, (outcome, resolved_at) in mark.outcomes.items():
            waiter = self._waiting[ticket]
            waiter.outcome, waiter.resolved_at = outcome, resolved_at
            waiter.history = None  # the rolled-back grant never happened

    def forget(self, ticket: str) -> None:
        """Keep no record of a ticket nobody was told about (granted or refused at once)."""
        self._resolved.pop(ticket, None)

    def forget_old(self, now: float) -> None:
        """Forget tickets resolved over `keep_resolved` ago. They are kept in the order they
        were resolved, so the pass stops at the first young one: each tick costs what it
        forgets, not every ticket of the last minute (a clock stepped back only delays it)."""
        while self._resolved:
            ticket, waiter = next(iter(self._resolved.items()))
            if waiter.resolved_at is not None and now - waiter.resolved_at <= self.keep_resolved:
                return
            del self._resolved[ticket]
