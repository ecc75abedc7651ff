"""What the allocator tells people: the allocation-failed message and device names.

Pure wording, kept apart from the service so it can be read (and tested) on its own.
"""

from __future__ import annotations

from collections.abc import Iterable

from ds01.durations import format_duration
from ds01.gpu import GpuReading


def wait_failed_message(
    gpu_wait: float, *, holding: int = 0, hold_after_stop: float = 900.0
) -> str:
    """DESIGN.md's message (first line, three suggestions), told as this system behaves:
    retire frees a GPU at once, stop keeps it for the hold; freeing advice only to holders."""
    if gpu_wait >= 60 and gpu_wait % 60 == 0:
        minutes = int(gpu_wait // 60)
        span = f"{minutes} minute" + ("s" if minutes != 1 else "")
    else:
        span = f"{gpu_wait:g} second" + ("s" if gpu_wait != 1 else "")
    hold = format_duration(hold_after_stop)
    if holding:
        first = (
            f"Free one of your {holding} at once: container retire <name> "
            f"(container stop <name> keeps its GPU for {hold})"
        )
    else:
        first = "Ask for fewer devices or another MIG profile, or try again later"
    return (
        f"GPU allocation failed after {span}.\n\n"
        "Suggestions:\n"
        f"  1. {first}\n"
        "  2. Wait for cleanup: idle GPU containers are stopped as they pass their idle "
        f"timeout, and a stopped one frees its GPU {hold} later\n"
        "  3. Check GPU status: gpu-status"
    )


def device_names(reading: GpuReading, uuids: Iterable[str]) -> str:
    """What users type and see: `0:2 (1g.18gb)`, `1 (full GPU)`; the UUID only if unknown."""
    known = {d.device_uuid: d for d in reading.devices}
    names = []
    for uuid_ in uuids:
        device = known.get(uuid_)
        names.append(
            f"{device.index} ({device.profile or 'full GPU'})" if device is not None else uuid_
        )
    return ", ".join(names)
