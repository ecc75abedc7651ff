"""Quota: `max_gpus` counts every device a user holds (reserved, bound, held) or waits for."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class QuotaDecision:
    allowed: bool
    message: str = ""


def check_quota(
    *,
    user: str,
    group: str,
    max_gpus: int | None,
    holding: int,
    waiting: int,
    count: int,
    by_node: Mapping[str, int] | None = None,
) -> QuotaDecision:
    """Refuse at once, with the numbers, when holding + waiting + count would pass max_gpus.

    `by_node` (a cluster store) breaks `holding` down per node, so the refusal says where.
    """
    if max_gpus is None or holding + waiting + count <= max_gpus:
        return QuotaDecision(True)
    unit = "GPU" if max_gpus == 1 else "GPUs"
    if holding:
        advice = (
            "Release one first: `container retire <name>` frees it at once "
            "(`container stop <name>` keeps it for the hold period)."
        )
    elif waiting:
        advice = "Wait for your queued request to be served, or cancel it (Ctrl-C)."
    else:
        advice = f"Ask for at most {max_gpus} {unit} (your group's limit)."
    message = (
        f"GPU quota exceeded: {user} (group {group}) holds {holding} of {max_gpus} {unit}"
        + (f" ({where(by_node)})" if by_node else "")
        + (f" and waits for {waiting} more" if waiting else "")
        + f"; this request asks for {count} more.\n"
        + advice
    )
    return QuotaDecision(False, message)


def where(by_node: Mapping[str, int]) -> str:
    """`gpu-a: 1, gpu-b: 1`: a user's devices per node, in node order."""
    return ", ".join(f"{node}: {count}" for node, count in sorted(by_node.items()) if count)
