"""The columns both allocation stores (SQLite, PostgreSQL) and the decision log read and write,
in schema order: one definition, so a new column cannot be forgotten by one of them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .extensions import Extension
from .model import Allocation


def allocation_row(allocation: Allocation, node: str) -> tuple[Any, ...]:
    """The 13 columns both stores write (id … node, in schema order): the inverse of
    `allocation_from_row`; an allocation without a node is this store's node's."""
    return (
        allocation.id,
        allocation.user,
        allocation.group,
        allocation.state,
        allocation.created_at,
        allocation.expires_at,
        allocation.container_id,
        allocation.container_name,
        allocation.container_type,
        allocation.profile,
        allocation.released_at,
        allocation.release_reason,
        allocation.node or node,
    )


def extension_row(extension: Extension) -> tuple[Any, ...]:
    """An extension's columns in the order both stores insert them."""
    return (
        extension.allocation_id,
        extension.container_id,
        extension.container_name,
        extension.user,
        extension.kind,
        extension.seconds,
        extension.granted_at,
    )


def allocation_from_row(
    row: Sequence[Any], devices: Sequence[str], vanished: Sequence[str]
) -> Allocation:
    """An allocation from the 13 columns both stores select (id … node, in schema order) and
    its device UUIDs in position order, with those that vanished."""
    return Allocation(
        id=row[0],
        user=row[1],
        group=row[2],
        state=row[3],
        created_at=row[4],
        expires_at=row[5],
        container_id=row[6],
        container_name=row[7],
        container_type=row[8],
        profile=row[9],
        released_at=row[10],
        release_reason=row[11],
        node=row[12],
        devices=tuple(devices),
        vanished=tuple(vanished),
    )
