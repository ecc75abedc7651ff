"""Allocation state behind an interface: what a decision may read and write in one transaction.

Every decision runs inside `store.transaction()` under one lock, and the database makes "a
device in two live allocations" impossible even for a bug. The single-host implementation is
SQLite with a decision log (allocator/store_sqlite.py); the cluster one is PostgreSQL
(allocator/store_postgres.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from .extensions import Extension
from .model import Allocation


class StoreConflict(RuntimeError):
    """A write that would put a device in two live allocations."""


class StoreUnavailable(RuntimeError):
    """The store cannot be reached or keeps refusing: nothing was written; retry later (503)."""


class StoreRetry(RuntimeError):
    """The transaction lost a race (serialization failure) and was rolled back: run it again."""


@dataclass(frozen=True)
class WaitRecord:
    """One queued request as other nodes see it: its devices count against the user's quota."""

    ticket: str
    user: str
    count: int
    deadline: float


class StoreTx(Protocol):
    """The operations one transaction offers."""

    def live(self) -> list[Allocation]: ...

    def get(self, allocation_id: str) -> Allocation | None: ...

    def history(self) -> list[Allocation]: ...

    def insert(self, allocation: Allocation) -> None: ...

    def update(self, allocation: Allocation) -> None: ...

    def prune(self, released_before: float) -> int: ...

    def extensions(self, allocation_ids: list[str]) -> list[Extension]: ...

    def add_extension(self, extension: Extension) -> None: ...

    def holdings(self, user: str) -> dict[str, int]:
        """Devices `user` holds in live allocations, per node, on every node of the store."""
        ...

    def waiting_elsewhere(self, user: str, now: float) -> dict[str, int]:
        """Devices `user` waits for on other nodes (unexpired published waits), per node."""
        ...

    def publish_waits(self, waits: Sequence[WaitRecord]) -> None:
        """Replace this node's published waits (a no-op for a single node)."""
        ...


class AllocationStore(Protocol):
    node: str
    shared: bool  # other allocators write too (the cluster store)
    where: str  # for logs and messages: a path, or host:port/dbname (never a password)

    def transaction(self) -> contextlib.AbstractContextManager[StoreTx]: ...

    def checkpoint(self) -> None:
        """Housekeeping the ticker runs outside the decision lock (SQLite: folding the decision
        log into the database, and the WAL copy)."""
        ...

    def close(self) -> None: ...
