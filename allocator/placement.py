"""Placement: which devices a request may use, in a deterministic order (pure, no I/O).

MIG instances come before whole GPUs, smallest first, so a big slice stays free for whoever
asks for it by profile; whole GPUs go only to groups with `allow_full_gpu`, and with
`full_gpu` only whole GPUs are considered.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ds01.gpu import GpuDevice


@dataclass(frozen=True)
class Feasibility:
    """Whether a request could ever be served on this host (else: refuse, do not queue)."""

    ok: bool
    reason: str = ""  # "not_allowed" | "impossible"
    message: str = ""


def device_order(device: GpuDevice) -> tuple:
    return (
        0 if device.kind == "mig" else 1,
        device.memory_total_bytes,
        device.gpu_index,
        device.mig_index if device.mig_index is not None else -1,
        device.device_uuid,
    )


def eligible_devices(
    inventory: Iterable[GpuDevice], *, profile: str | None, full_gpu: bool, allow_full_gpu: bool
) -> tuple[GpuDevice, ...]:
    """Every device of the inventory that this kind of request may be given, best first."""
    chosen = []
    for device in inventory:
        if full_gpu:
            ok = device.kind == "gpu"
        elif profile:
            ok = device.kind == "mig" and device.profile == profile
        else:
            ok = device.kind == "mig" or allow_full_gpu
        if ok:
            chosen.append(device)
    return tuple(sorted(chosen, key=device_order))


def usable_by(uuids: Iterable[str], user: str, owners: Mapping[str, set[str]]) -> tuple[str, ...]:
    """The devices among `uuids` (order kept) that run nobody else's compute process: a
    device with someone else's process, or one whose owner is unknown ("?"), is not handed out.

    `owners`: who runs compute processes on each device that has any."""
    if not owners:
        return tuple(uuids)
    return tuple(u for u in uuids if not (owners.get(u, set()) - {user}))


class EligibilityCache:
    """`eligible_devices` remembered per inventory: an inventory lasts many requests.

    Keyed by the inventory's identity; the (inventory, answers) pair is swapped in whole, so
    threads may share it: the worst a race costs is one answer computed twice.
    """

    def __init__(self) -> None:
        self._memo: tuple[object, dict[tuple, tuple[GpuDevice, ...]]] = (None, {})

    def eligible(
        self,
        inventory: Sequence[GpuDevice],
        *,
        profile: str | None,
        full_gpu: bool,
        allow_full_gpu: bool,
    ) -> tuple[GpuDevice, ...]:
        known, answers = self._memo
        if known is not inventory:
            answers = {}
            self._memo = (inventory, answers)
        key = (profile, full_gpu, allow_full_gpu)
        found = answers.get(key)
        if found is None:
            found = answers[key] = eligible_devices(
                inventory, profile=profile, full_gpu=full_gpu, allow_full_gpu=allow_full_gpu
            )
        return found


def feasibility(
    inventory: Sequence[GpuDevice],
    *,
    count: int,
    profile: str | None,
    full_gpu: bool,
    allow_full_gpu: bool,
    group: str,
    eligible: Sequence[GpuDevice] | None = None,
) -> Feasibility:
    """Refuse requests no amount of waiting can serve: not allowed, unknown profile, too many.

    `eligible`: `eligible_devices` of the same request, when the caller has it already."""
    if full_gpu and not allow_full_gpu:
        return Feasibility(
            False,
            "not_allowed",
            f"whole GPUs are not available to group {group}; ask for MIG instances "
            "(leave out --full-gpu) or ask an admin",
        )
    if full_gpu and profile:
        return Feasibility(False, "impossible", "ask for either a profile or a whole GPU")
    if eligible is None:
        eligible = eligible_devices(
            inventory, profile=profile, full_gpu=full_gpu, allow_full_gpu=allow_full_gpu
        )
    if len(eligible) >= count:
        return Feasibility(True)
    if profile:
        known = sorted({d.profile for d in inventory if d.kind == "mig"})
        have = ", ".join(known) or "none"
        what = f"{len(eligible)} device(s) with MIG profile {profile} (profiles here: {have})"
    elif full_gpu:
        what = f"{len(eligible)} whole GPU(s)"
    else:
        what = f"{len(eligible)} device(s) available to group {group}"
    return Feasibility(False, "impossible", f"asked for {count}, but this host has only {what}")
