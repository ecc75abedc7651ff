"""The admin-owned policy file, loaded once into the frozen records of `policy_model` and
validated key by key.

Every error names the file, the key path and the reason (`ds01.yaml: groups.student.max_gpus:
must be a whole number >= 0 or null`); nothing falls back to defaults silently.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import yaml

from .cluster_policy import ClusterError, parse_cluster, valid_node_name
from .durations import parse_duration
from .notify_policy import NotificationsError, notification_channels, parse_notifications
from .policy_model import (  # re-exported: callers import records from here
    CONTAINER_TYPES,
    DEFAULT_CONTAINER_TYPES,
    DEFAULT_GROUPS,
    EXEMPTION_KINDS,
    INF,
    Exemption,
    ExtensionBounds,
    GatewayPolicy,
    GpuSettings,
    GroupPolicy,
    KeepAlive,
    Limits,
    Policy,
    Services,
    UnmanagedGpu,
    default_policy,
)

DEFAULT_POLICY_PATH = "/etc/ds01/ds01.yaml"


class PolicyError(ValueError):
    """An invalid policy: `str()` is the one line to show the admin."""

    def __init__(self, source: str, key: str, reason: str) -> None:
        self.source, self.key, self.reason = source, key, reason
        super().__init__(f"{source}: {key}: {reason}" if key else f"{source}: {reason}")


class _Reader:
    """Walks the YAML with the current key path, so every error can name it."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, reason: str) -> PolicyError:
        return PolicyError(self.source, key, reason)

    def mapping(self, value: Any, key: str, allowed: tuple[str, ...] | None) -> Mapping[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise self.fail(key, f"must be a mapping, got {type(value).__name__}")
        for name in value:
            if not isinstance(name, str):
                raise self.fail(key, f"keys must be strings, got {name!r}")
            if allowed is not None and name not in allowed:
                where = f"{key}.{name}" if key else name
                raise self.fail(where, f"unknown key (expected one of: {', '.join(allowed)})")
        return value

    def duration(self, value: Any, key: str) -> float:
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            try:
                return parse_duration(value)
            except ValueError as exc:
                raise self.fail(key, str(exc)) from None
        raise self.fail(key, f"expected a duration like 90s, 30m, 1.5h or 7d, got {value!r}")

    def optional_duration(self, value: Any, key: str) -> float | None:
        return None if value is None else self.duration(value, key)

    def count(self, value: Any, key: str, *, nullable: bool) -> int | None:
        if value is None and nullable:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            suffix = " or null" if nullable else ""
            raise self.fail(key, f"must be a whole number >= 0{suffix}, got {value!r}")
        return value

    def ratio(self, value: Any, key: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
            raise self.fail(key, f"must be a number between 0 and 1, got {value!r}")
        return float(value)

    def text(self, value: Any, key: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(key, f"must be a non-empty string, got {value!r}")
        return value

    def boolean(self, value: Any, key: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(key, f"must be true or false, got {value!r}")
        return value

    def names(self, value: Any, key: str) -> frozenset[str]:
        if value is None:
            return frozenset()
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.fail(key, "must be a list of names")
        return frozenset(value)


_TOP_KEYS = (
    "default_group",
    "groups",
    "users",
    "idle_timeout",
    "idle_warning",
    "runtime_warning",
    "gpu_wait",
    "gpu_hold_after_stop",
    "container_hold_after_stop",
    "reservation_ttl",
    "allocation_history",
    "busy_threshold",
    "container_types",
    "keep_alive",
    "exemptions",
    "protected",
    "stop_grace",
    "unmanaged_gpu",
    "gpu",
    "services",
    "gateway",
    "notifications",
    "cluster",
)
_GATEWAY_KEYS = (
    "socket",
    "docker_socket",
    "list_all_containers",
    "admin_groups",
    "allowed_bind_paths",
    "allowed_capabilities",
    "allowed_devices",
    "max_create_body",
)
_GROUP_KEYS = ("max_gpus", "max_runtime", "idle_timeout", "allow_full_gpu", "extensions")
_EXTENSION_KEYS = ("max_per_container", "max_total", "max_each", "refuse_while_queued")
_SERVICE_KEYS = tuple(f for f in Services.__dataclass_fields__)


def parse_policy(data: Any, source: str = "<policy>") -> Policy:
    """Validate an already-parsed YAML document."""
    r = _Reader(source)
    top = r.mapping(data, "", _TOP_KEYS)
    base = default_policy()

    groups: dict[str, GroupPolicy] = dict(base.groups)
    if "groups" in top:
        raw_groups = r.mapping(top["groups"], "groups", None)
        if not raw_groups:
            raise r.fail("groups", "must define at least one group")
        groups = {}
        for name, raw in raw_groups.items():
            key = f"groups.{name}"
            g = r.mapping(raw, key, _GROUP_KEYS)
            groups[name] = GroupPolicy(
                name=name,
                max_gpus=r.count(g.get("max_gpus", 2), f"{key}.max_gpus", nullable=True),
                max_runtime=r.duration(g.get("max_runtime", "24h"), f"{key}.max_runtime"),
                idle_timeout=r.optional_duration(g.get("idle_timeout"), f"{key}.idle_timeout"),
                allow_full_gpu=r.boolean(g.get("allow_full_gpu", False), f"{key}.allow_full_gpu"),
                extensions=_extension_bounds(r, g.get("extensions"), f"{key}.extensions"),
            )

    default_group = r.text(top.get("default_group", base.default_group), "default_group")
    if default_group not in groups:
        raise r.fail("default_group", f"unknown group {default_group!r}")

    users: dict[str, str] = {}
    for user, group in r.mapping(top.get("users"), "users", None).items():
        if not isinstance(group, str) or group not in groups:
            raise r.fail(f"users.{user}", f"unknown group {group!r}")
        users[user] = group

    container_types: dict[str, float | None] = dict(base.container_types)
    for ctype, raw in r.mapping(
        top.get("container_types"), "container_types", CONTAINER_TYPES
    ).items():
        key = f"container_types.{ctype}"
        spec = r.mapping(raw, key, ("max_runtime",))
        value = spec.get("max_runtime", "group")
        container_types[ctype] = (
            None if value == "group" else r.duration(value, f"{key}.max_runtime")
        )

    ka = r.mapping(top.get("keep_alive"), "keep_alive", ("path", "max_age"))
    keep_alive = KeepAlive(
        path=r.text(ka.get("path", KeepAlive.path), "keep_alive.path"),
        max_age=r.duration(ka.get("max_age", "24h"), "keep_alive.max_age"),
    )
    if not keep_alive.path.startswith("/"):
        raise r.fail("keep_alive.path", "must be an absolute path inside the container")

    exemptions = tuple(
        _exemption(r, raw, f"exemptions[{i}]", groups)
        for i, raw in enumerate(_list(r, top.get("exemptions"), "exemptions"))
    )

    prot = r.mapping(top.get("protected"), "protected", ("names", "users"))
    un = r.mapping(top.get("unmanaged_gpu"), "unmanaged_gpu", ("action", "grace"))
    action = un.get("action", "stop")
    if action not in ("stop", "notify", "ignore"):
        raise r.fail("unmanaged_gpu.action", f"must be stop, notify or ignore, got {action!r}")
    gpu = r.mapping(top.get("gpu"), "gpu", ("backend", "sim_topology"))
    backend = gpu.get("backend", "auto")
    if backend not in ("auto", "nvml", "sim"):
        raise r.fail("gpu.backend", f"must be auto, nvml or sim, got {backend!r}")
    topology = gpu.get("sim_topology")
    if topology is not None:
        topology = r.text(topology, "gpu.sim_topology")

    svc = r.mapping(top.get("services"), "services", _SERVICE_KEYS)
    services_values: dict[str, Any] = {}
    for name, value in svc.items():
        if value is None and name == "allocator_listen":
            services_values[name] = None
        else:
            services_values[name] = r.text(value, f"services.{name}")

    hold = top.get("container_hold_after_stop", "30m")
    try:
        notifications = parse_notifications(top.get("notifications"))
    except NotificationsError as exc:
        raise r.fail(exc.key, exc.reason) from None
    try:
        cluster = parse_cluster(top.get("cluster"))
    except ClusterError as exc:
        raise r.fail(exc.key, exc.reason) from None
    node = services_values.get("node", "")
    if node and not valid_node_name(node):
        raise r.fail("services.node", f"not a host-like name: {node!r}")
    return Policy(
        source=source,
        default_group=default_group,
        groups=groups,
        users=users,
        idle_timeout=r.duration(top.get("idle_timeout", "30m"), "idle_timeout"),
        idle_warning=r.duration(top.get("idle_warning", "10m"), "idle_warning"),
        runtime_warning=r.duration(top.get("runtime_warning", "1h"), "runtime_warning"),
        gpu_wait=r.duration(top.get("gpu_wait", "3m"), "gpu_wait"),
        gpu_hold_after_stop=r.duration(
            top.get("gpu_hold_after_stop", "15m"), "gpu_hold_after_stop"
        ),
        container_hold_after_stop=r.optional_duration(hold, "container_hold_after_stop"),
        reservation_ttl=r.duration(top.get("reservation_ttl", "60s"), "reservation_ttl"),
        allocation_history=r.duration(top.get("allocation_history", "30d"), "allocation_history"),
        busy_threshold=r.ratio(top.get("busy_threshold", 0.05), "busy_threshold"),
        container_types=container_types,
        keep_alive=keep_alive,
        exemptions=exemptions,
        protected_names=r.names(prot.get("names"), "protected.names"),
        protected_users=r.names(prot.get("users"), "protected.users"),
        stop_grace=r.duration(top.get("stop_grace", "60s"), "stop_grace"),
        unmanaged_gpu=UnmanagedGpu(
            action, r.duration(un.get("grace", "10m"), "unmanaged_gpu.grace")
        ),
        gpu=GpuSettings(backend, topology),
        services=Services(**services_values),
        gateway=_gateway(r, top.get("gateway"), groups),
        notifications=notifications,
        cluster=cluster,
    )


def _gateway(r: _Reader, value: Any, groups: Mapping[str, GroupPolicy]) -> GatewayPolicy:
    raw = r.mapping(value, "gateway", _GATEWAY_KEYS)
    base = GatewayPolicy()
    if "admin_groups" in raw:
        admin_groups = r.names(raw["admin_groups"], "gateway.admin_groups")
    else:  # the default names `admin` only where the policy has such a group
        admin_groups = base.admin_groups & frozenset(groups)
    unknown = sorted(admin_groups - set(groups))
    if unknown:
        raise r.fail("gateway.admin_groups", f"unknown group {unknown[0]!r}")
    paths = r.names(raw.get("allowed_bind_paths", []), "gateway.allowed_bind_paths")
    for path in paths:
        if not path.startswith("/") or path.rstrip("/") == "":
            raise r.fail("gateway.allowed_bind_paths", f"{path!r} must be an absolute path below /")
    devices = r.names(raw.get("allowed_devices", []), "gateway.allowed_devices")
    for device in devices:
        if not device.startswith("/dev/") or device.startswith("/dev/nvidia"):
            raise r.fail(
                "gateway.allowed_devices", f"{device!r} must be a /dev path other than /dev/nvidia*"
            )
    caps = r.names(
        raw.get("allowed_capabilities", sorted(base.allowed_capabilities)),
        "gateway.allowed_capabilities",
    )
    if "ALL" in {c.upper() for c in caps}:
        raise r.fail("gateway.allowed_capabilities", "ALL would allow every capability")
    limit = r.count(
        raw.get("max_create_body", base.max_create_body), "gateway.max_create_body", nullable=False
    )
    if not limit or limit < 4096:
        raise r.fail("gateway.max_create_body", "must be at least 4096 bytes")
    return GatewayPolicy(
        socket=r.text(raw.get("socket", base.socket), "gateway.socket"),
        docker_socket=r.text(raw.get("docker_socket", base.docker_socket), "gateway.docker_socket"),
        list_all_containers=r.boolean(
            raw.get("list_all_containers", True), "gateway.list_all_containers"
        ),
        admin_groups=admin_groups,
        allowed_bind_paths=tuple(sorted(paths)),
        allowed_capabilities=frozenset(c.upper().removeprefix("CAP_") for c in caps),
        allowed_devices=devices,
        max_create_body=limit,
    )


def _extension_bounds(r: _Reader, value: Any, key: str) -> ExtensionBounds:
    """A group's `extensions:`; absent = no extensions, null values = no bound."""
    raw = r.mapping(value, key, _EXTENSION_KEYS)
    bounds = ExtensionBounds(
        max_per_container=r.count(
            raw.get("max_per_container", 0), f"{key}.max_per_container", nullable=True
        ),
        max_total=r.optional_duration(raw.get("max_total"), f"{key}.max_total"),
        max_each=r.optional_duration(raw.get("max_each"), f"{key}.max_each"),
        refuse_while_queued=r.boolean(
            raw.get("refuse_while_queued", True), f"{key}.refuse_while_queued"
        ),
    )
    for name in ("max_total", "max_each"):
        if getattr(bounds, name) == 0:
            raise r.fail(f"{key}.{name}", "must be above 0 (set max_per_container: 0 instead)")
    return bounds


def _list(r: _Reader, value: Any, key: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise r.fail(key, f"must be a list, got {type(value).__name__}")
    return value


def _exemption(r: _Reader, raw: Any, key: str, groups: Mapping[str, GroupPolicy]) -> Exemption:
    e = r.mapping(raw, key, ("user", "group", "from", "until", "reason"))
    user = r.text(e["user"], f"{key}.user") if "user" in e else None
    group = r.text(e["group"], f"{key}.group") if "group" in e else None
    if user is None and group is None:
        raise r.fail(key, "needs a user or a group")
    if group is not None and group not in groups:
        raise r.fail(f"{key}.group", f"unknown group {group!r}")
    kinds = e.get("from")
    if not isinstance(kinds, list) or not kinds or any(k not in EXEMPTION_KINDS for k in kinds):
        raise r.fail(f"{key}.from", f"must be a non-empty list of {', '.join(EXEMPTION_KINDS)}")
    reason = r.text(e.get("reason"), f"{key}.reason")
    return Exemption(frozenset(kinds), reason, user, group, _until(r, e.get("until"), key))


def _until(r: _Reader, value: Any, key: str) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime.combine(value + timedelta(days=1), time(0), tzinfo=UTC)
    if isinstance(value, str):
        try:
            return _until(r, date.fromisoformat(value), key)
        except ValueError:
            pass
        try:
            return _until(r, datetime.fromisoformat(value), key)
        except ValueError:
            pass
    raise r.fail(f"{key}.until", f"must be a date like 2027-01-31, got {value!r}")


def load_policy(path: str | os.PathLike[str]) -> Policy:
    """Read and validate a policy file; raise PolicyError naming the file, key and reason."""
    source = str(path)
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise PolicyError(source, "", "file not found") from None
    except OSError as exc:
        raise PolicyError(source, "", f"cannot read: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "YAML"
        problem = getattr(exc, "problem", None) or str(exc)
        raise PolicyError(source, where, f"YAML syntax error: {problem}") from None
    return parse_policy(data if data is not None else {}, source)


def policy_path(explicit: str | None = None) -> str:
    return explicit or os.environ.get("DS01_POLICY") or DEFAULT_POLICY_PATH


def load_policy_or_default(path: str | None) -> Policy:
    """The policy file when one is named or exists; the built-in defaults otherwise."""
    chosen = policy_path(path)
    if path is None and "DS01_POLICY" not in os.environ and not Path(chosen).exists():
        return default_policy()
    return load_policy(chosen)


def summary(policy: Policy) -> str:
    """A few lines for `ds01 check-config`."""
    from .durations import format_duration as fmt

    lines = [f"{policy.source}: OK"]
    for g in policy.groups.values():
        quota = "unlimited" if g.max_gpus is None else str(g.max_gpus)
        idle = fmt(g.idle_timeout if g.idle_timeout is not None else policy.idle_timeout)
        lines.append(
            f"  group {g.name}: max_gpus {quota}, max_runtime {fmt(g.max_runtime)}, idle {idle}"
            + (", full GPUs allowed" if g.allow_full_gpu else "")
        )
    lines.append(
        f"  {len(policy.users)} users mapped (default group {policy.default_group}), "
        f"{len(policy.exemptions)} exemptions, {len(policy.protected_names)} protected names"
    )
    lines.append("  owners are told by: " + notification_channels(policy.notifications))
    return "\n".join(lines)


__all__ = [
    "CONTAINER_TYPES",
    "DEFAULT_CONTAINER_TYPES",
    "DEFAULT_GROUPS",
    "DEFAULT_POLICY_PATH",
    "EXEMPTION_KINDS",
    "Exemption",
    "ExtensionBounds",
    "GpuSettings",
    "GroupPolicy",
    "INF",
    "KeepAlive",
    "Limits",
    "Policy",
    "PolicyError",
    "Services",
    "UnmanagedGpu",
    "default_policy",
    "load_policy",
    "load_policy_or_default",
    "parse_policy",
    "policy_path",
    "summary",
]
