"""Policy records and their resolution: what applies to one user's container at one moment.

Pure data and decisions, no I/O; `ds01.policy` loads and validates the YAML into these.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from .cluster_policy import Cluster
from .notify_policy import Notifications

CONTAINER_TYPES = ("ds01", "devcontainer", "compose", "docker")
EXEMPTION_KINDS = ("idle", "max_runtime", "unmanaged")
INF = math.inf


@dataclass(frozen=True)
class ExtensionBounds:
    """How far a group's users may push their own deadlines (None = no bound; 0 = none)."""

    max_per_container: int | None = 0
    max_total: float | None = None  # seconds per container, all extensions together
    max_each: float | None = None  # seconds per extension
    refuse_while_queued: bool = True  # refused while others wait for that device type

    @property
    def default_each(self) -> float:
        """What `container extend NAME` without a duration asks for."""
        return self.max_each if self.max_each is not None else 3600.0


@dataclass(frozen=True)
class GroupPolicy:
    name: str
    max_gpus: int | None = 2
    max_runtime: float = 24 * 3600
    idle_timeout: float | None = None  # None: the global idle_timeout
    allow_full_gpu: bool = False
    extensions: ExtensionBounds = field(default_factory=ExtensionBounds)


@dataclass(frozen=True)
class Exemption:
    """Granted by the admin only; `until` is inclusive (the whole day, UTC)."""

    kinds: frozenset[str]
    reason: str
    user: str | None = None
    group: str | None = None
    until: datetime | None = None

    def applies(self, *, user: str, group: str, kind: str, at: datetime) -> bool:
        if kind not in self.kinds:
            return False
        if self.user is not None and self.user != user:
            return False
        if self.group is not None and self.group != group:
            return False
        return self.until is None or at < self.until


@dataclass(frozen=True)
class KeepAlive:
    path: str = "/workspace/.keep-alive"
    max_age: float = 24 * 3600


@dataclass(frozen=True)
class UnmanagedGpu:
    action: str = "stop"  # stop | notify | ignore
    grace: float = 600.0


@dataclass(frozen=True)
class GpuSettings:
    backend: str = "auto"
    sim_topology: str | None = None


@dataclass(frozen=True)
class Services:
    """Where each service listens; every one has a working default for `ds01 up`."""

    node: str = ""  # this host's node name ("": the short host name; ds01.cluster_policy)
    state_dir: str = "/var/lib/ds01"
    exporter_listen: str = "127.0.0.1:9101"
    enforcer_listen: str = "127.0.0.1:9102"
    allocator_socket: str = "/run/ds01/allocator.sock"
    allocator_listen: str | None = None
    prometheus_url: str = "http://127.0.0.1:9090"
    alertmanager_url: str = "http://127.0.0.1:9093"
    exporter_url: str = "http://127.0.0.1:9101"
    token_file: str = "/etc/ds01/enforcer.token"
    notice_path: str = "/workspace/.ds01-alerts"
    # The enforcer writes it, the allocator reads it ("": <state_dir>/enforcer-audit.jsonl).
    audit_log: str = ""
    # Prometheus' password for Alertmanager's basic auth (user `prometheus`; ds01.webauth).
    alertmanager_password_file: str = "/etc/ds01/alertmanager/prometheus.password"


@dataclass(frozen=True)
class GatewayPolicy:
    """The Docker API gateway: its sockets, who is an admin, what users' containers may have."""

    socket: str = "/run/ds01/docker.sock"
    docker_socket: str = "/run/ds01/dockerd.sock"  # dockerd's own, root-only
    list_all_containers: bool = True
    admin_groups: frozenset[str] = frozenset({"admin"})
    allowed_bind_paths: tuple[str, ...] = ()  # besides the caller's home
    allowed_capabilities: frozenset[str] = frozenset({"SYS_PTRACE"})
    allowed_devices: frozenset[str] = frozenset()
    max_create_body: int = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """What applies to one (user, container type) at one moment."""

    user: str
    group: str
    container_type: str
    max_gpus: int | None
    idle_timeout: float
    max_runtime: float
    stop_grace: float
    idle_exempt: bool
    runtime_exempt: bool
    unmanaged_exempt: bool
    exemptions: tuple[Exemption, ...]


@dataclass(frozen=True)
class Policy:
    source: str = "<defaults>"
    default_group: str = "student"
    groups: Mapping[str, GroupPolicy] = field(default_factory=dict)
    users: Mapping[str, str] = field(default_factory=dict)
    idle_timeout: float = 1800.0
    idle_warning: float = 600.0
    runtime_warning: float = 3600.0
    gpu_wait: float = 180.0
    gpu_hold_after_stop: float = 900.0
    container_hold_after_stop: float | None = 1800.0
    reservation_ttl: float = 60.0
    allocation_history: float = 30 * 86400.0  # released allocations are kept this long
    busy_threshold: float = 0.05
    container_types: Mapping[str, float | None] = field(default_factory=dict)  # None = group
    keep_alive: KeepAlive = field(default_factory=KeepAlive)
    exemptions: tuple[Exemption, ...] = ()
    protected_names: frozenset[str] = frozenset()
    protected_users: frozenset[str] = frozenset()
    stop_grace: float = 60.0
    unmanaged_gpu: UnmanagedGpu = field(default_factory=UnmanagedGpu)
    gpu: GpuSettings = field(default_factory=GpuSettings)
    services: Services = field(default_factory=Services)
    gateway: GatewayPolicy = field(default_factory=GatewayPolicy)
    notifications: Notifications = field(default_factory=Notifications)
    cluster: Cluster = field(default_factory=Cluster)

    def group_of(self, user: str) -> GroupPolicy:
        return self.groups[self.users.get(user, self.default_group)]

    def limits_for(self, user: str, container_type: str, at: datetime) -> Limits:
        """Resolve group, quota, timeouts, grace and exemptions in force at `at`."""
        group = self.group_of(user)
        type_runtime = self.container_types.get(container_type)
        max_runtime = group.max_runtime if type_runtime is None else type_runtime
        in_force = tuple(
            e
            for e in self.exemptions
            if any(e.applies(user=user, group=group.name, kind=k, at=at) for k in e.kinds)
        )

        def exempt(kind: str) -> bool:
            return any(e.applies(user=user, group=group.name, kind=kind, at=at) for e in in_force)

        return Limits(
            user=user,
            group=group.name,
            container_type=container_type,
            max_gpus=group.max_gpus,
            idle_timeout=group.idle_timeout
            if group.idle_timeout is not None
            else self.idle_timeout,
            max_runtime=max_runtime,
            stop_grace=self.stop_grace,
            idle_exempt=exempt("idle"),
            runtime_exempt=exempt("max_runtime"),
            unmanaged_exempt=exempt("unmanaged"),
            exemptions=in_force,
        )


DEFAULT_GROUPS = {
    "student": GroupPolicy(
        "student", 2, 24 * 3600, extensions=ExtensionBounds(2, 8 * 3600.0, 4 * 3600.0)
    ),
    "researcher": GroupPolicy(
        "researcher", 4, 48 * 3600, extensions=ExtensionBounds(3, 24 * 3600.0, 8 * 3600.0)
    ),
    "faculty": GroupPolicy(
        "faculty",
        4,
        72 * 3600,
        idle_timeout=3600,
        extensions=ExtensionBounds(3, 24 * 3600.0, 8 * 3600.0),
    ),
    "admin": GroupPolicy(
        "admin",
        None,
        72 * 3600,
        allow_full_gpu=True,
        extensions=ExtensionBounds(None, None, None, refuse_while_queued=False),
    ),
}
DEFAULT_CONTAINER_TYPES: dict[str, float | None] = {
    "ds01": None,
    "devcontainer": 7 * 86400,
    "compose": 3 * 86400,
    "docker": 2 * 86400,
}


def default_policy() -> Policy:
    return Policy(groups=dict(DEFAULT_GROUPS), container_types=dict(DEFAULT_CONTAINER_TYPES))
