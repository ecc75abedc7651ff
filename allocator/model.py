"""The allocator's records: an allocation, its states, and the answers the service gives."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

RESERVED = "reserved"  # granted, no container yet (expires after reservation_ttl)
BOUND = "bound"  # a container labelled ds01.allocation=<id> exists and runs
HELD = "held"  # its container stopped; the devices stay for gpu_hold_after_stop
RELEASED = "released"  # final: the devices are free again
LIVE_STATES = (RESERVED, BOUND, HELD)

# Why a request was refused (the `reason` label of ds01_allocator_denials_total).
DENIAL_REASONS = ("quota", "not_allowed", "impossible", "no_capacity", "timeout", "invalid")


@dataclass(frozen=True)
class AllocationRequest:
    """What a caller asks for; `user` is the identity from the connection, never the body."""

    user: str
    count: int = 1
    profile: str | None = None  # e.g. "3g.71gb": that profile or wait
    full_gpu: bool = False  # whole GPUs only (groups with allow_full_gpu)
    container_type: str = "docker"
    container_name: str = ""


@dataclass(frozen=True)
class Allocation:
    """One grant of devices to one user; `expires_at` is the reservation or hold deadline."""

    id: str
    user: str
    group: str
    devices: tuple[str, ...]
    state: str
    created_at: float
    expires_at: float | None = None
    container_id: str = ""
    container_name: str = ""
    container_type: str = "docker"
    profile: str = ""
    released_at: float | None = None
    release_reason: str = ""
    vanished: tuple[str, ...] = ()  # devices no longer in the GPU inventory
    node: str = ""  # the GPU node whose devices these are (a cluster store holds every node's)

    @property
    def live(self) -> bool:
        return self.state in LIVE_STATES

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "user": self.user,
            "group": self.group,
            "devices": list(self.devices),
            "state": self.state,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "container_id": self.container_id,
            "container_name": self.container_name,
            "container_type": self.container_type,
            "profile": self.profile,
            "released_at": self.released_at,
            "release_reason": self.release_reason,
            "vanished": list(self.vanished),
            "node": self.node,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Allocation:
        return cls(
            id=data["id"],
            user=data["user"],
            group=data.get("group", ""),
            devices=tuple(data.get("devices", ())),
            state=data["state"],
            created_at=float(data.get("created_at", 0.0)),
            expires_at=data.get("expires_at"),
            container_id=data.get("container_id", ""),
            container_name=data.get("container_name", ""),
            container_type=data.get("container_type", "docker"),
            profile=data.get("profile", ""),
            released_at=data.get("released_at"),
            release_reason=data.get("release_reason", ""),
            vanished=tuple(data.get("vanished", ())),
            node=data.get("node", ""),
        )


@dataclass(frozen=True)
class Denial:
    """A refusal: `reason` is one of DENIAL_REASONS, `message` is what the user reads."""

    reason: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)


class AllocatorError(Exception):
    """A refusal raised through the service; carries the Denial."""

    def __init__(self, denial: Denial) -> None:
        super().__init__(denial.message)
        self.denial = denial
