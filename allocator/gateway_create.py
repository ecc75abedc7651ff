"""What a container-create body asks for, what it may not have, and its rewrite (pure; no I/O).

A create body is user input: its labels name the client type but never the owner, its GPU
requests come in three forms (DeviceRequests, the nvidia runtime with NVIDIA_VISIBLE_DEVICES,
raw /dev/nvidia* devices), and its HostConfig can escape every rule (privileged, host
namespaces, bind mounts of / or of the Docker socket). Each refusal names the field.
"""

from __future__ import annotations

import copy
import os
import posixpath
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ds01.containers import (
    LABEL_ALLOCATION,
    LABEL_DEVICES,
    LABEL_MANAGED,
    LABEL_TYPE,
    LABEL_USER,
)

LABEL_GROUP = "ds01.group"
VISIBLE = "NVIDIA_VISIBLE_DEVICES"
NO_GPU = ("", "void", "none")
_GPU_DEVICE = re.compile(r"^/dev/nvidia")
_UNCONFINED = {
    ("apparmor", "unconfined"): "AppArmor confinement",
    ("seccomp", "unconfined"): "the seccomp filter",
    ("label", "disable"): "SELinux labelling",
    ("systempaths", "unconfined"): "masked /proc and /sys paths",
}
_HOST_NAMESPACES = (("PidMode", "PID"), ("IpcMode", "IPC"), ("UsernsMode", "user"))
GPU_HINT = "ask for GPUs with --gpus (e.g. --gpus 1) and the allocator assigns one"


@dataclass(frozen=True)
class CreateRules:
    """What a non-admin's container may have beyond the defaults (from the policy)."""

    allowed_bind_paths: tuple[str, ...] = ()
    allowed_capabilities: frozenset[str] = frozenset({"SYS_PTRACE"})
    allowed_devices: frozenset[str] = frozenset()
    docker_sockets: tuple[str, ...] = ("/run/docker.sock", "/var/run/docker.sock")


@dataclass(frozen=True)
class GpuAsk:
    """How many devices a create asks for, and the device names it gave (for a profile hint)."""

    count: int
    named: tuple[str, ...]
    source: str  # DeviceRequests | NVIDIA_VISIBLE_DEVICES
    all_devices: bool = False  # `--gpus all` / count -1: rewritten to one device


class CreateRefused(ValueError):
    """The body asks for something the caller may not have; the message names the field."""


def _mapping(value: Any, field: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise CreateRefused(f"{field}: must be a JSON object")
    return value


def _list(value: Any, field: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise CreateRefused(f"{field}: must be a JSON array")
    return value


def env_value(env: Iterable[Any], key: str) -> str | None:
    """The last value `env` sets for `key` (Docker keeps the last), None when unset."""
    found = None
    for item in env:
        if isinstance(item, str) and item.partition("=")[0] == key:
            found = item.partition("=")[2]
    return found


def nvidia_runtime_applies(body: Mapping[str, Any], default_runtime: str) -> bool:
    runtime = _mapping(body.get("HostConfig"), "HostConfig").get("Runtime") or default_runtime
    return runtime == "nvidia"


def _is_gpu_request(request: Any) -> bool:
    if not isinstance(request, dict):
        raise CreateRefused("HostConfig.DeviceRequests: each entry must be a JSON object")
    capabilities = request.get("Capabilities") or []
    wanted = {c for group in capabilities if isinstance(group, list) for c in group}
    return "gpu" in wanted or request.get("Driver") == "nvidia"


def gpu_ask(body: Mapping[str, Any], *, default_runtime: str = "runc") -> GpuAsk | None:
    """The GPU request in a create body, whichever form it takes; None for no GPU."""
    host = _mapping(body.get("HostConfig"), "HostConfig")
    count, named, all_devices = 0, [], False
    found = False
    for request in _list(host.get("DeviceRequests"), "HostConfig.DeviceRequests"):
        if not _is_gpu_request(request):
            continue
        found = True
        ids = [str(i) for i in request.get("DeviceIDs") or [] if str(i)]
        wanted = request.get("Count") or 0
        if ids:
            count += len(ids)
            named += ids
        elif wanted == -1:
            count, all_devices = count + 1, True
        elif isinstance(wanted, int) and wanted > 0:
            count += wanted
        else:
            raise CreateRefused("HostConfig.DeviceRequests: a GPU request needs Count or DeviceIDs")
    if found:
        return GpuAsk(count, tuple(named), "DeviceRequests", all_devices)
    if not nvidia_runtime_applies(body, default_runtime):
        return None  # NVIDIA_VISIBLE_DEVICES without the nvidia runtime is no GPU access
    visible = env_value(_list(body.get("Env"), "Env"), VISIBLE)
    explicit = bool(host.get("Runtime") == "nvidia")
    if visible is None:
        return GpuAsk(1, (), VISIBLE, True) if explicit else None
    value = visible.strip()
    if value.lower() in NO_GPU:
        return None
    if value.lower() == "all":
        return GpuAsk(1, (), VISIBLE, True)
    listed = tuple(v.strip() for v in value.split(",") if v.strip())
    return GpuAsk(len(listed), listed, VISIBLE)


# --- refusals ---------------------------------------------------------------------------------


def _within(path: str, roots: Iterable[str]) -> bool:
    for root in roots:
        root = root.rstrip("/") or "/"
        if root == "/":
            continue  # a home or allowed path of "/" would allow everything
        if path == root or path.startswith(root + "/"):
            return True
    return False


def bind_refusal(
    source: str,
    field: str,
    *,
    home: str | None,
    rules: CreateRules,
    realpath: Callable[[str], str],
) -> str | None:
    if not source.startswith("/"):
        return f"{field}: {source!r} must be an absolute host path"
    real = realpath(posixpath.normpath(source))
    sockets = {realpath(s) for s in rules.docker_sockets} | set(rules.docker_sockets)
    if real in sockets or posixpath.basename(real) == "docker.sock":
        return f"{field}: the Docker socket may not be mounted into a container"
    roots = [r for r in (home, *rules.allowed_bind_paths) if r]
    if _within(real, [realpath(r) for r in roots]):
        return None
    where = ", ".join(roots) if roots else "no host paths"
    return f"{field}: host path {source} is outside the paths you may mount ({where})"


def _mounts_refusal(
    host: Mapping[str, Any], home: str | None, rules: CreateRules, realpath: Callable[[str], str]
) -> str | None:
    for i, bind in enumerate(_list(host.get("Binds"), "HostConfig.Binds")):
        if not isinstance(bind, str):
            return f"HostConfig.Binds[{i}]: must be a string"
        source = bind.split(":", 1)[0]
        if source.startswith("/"):
            problem = bind_refusal(
                source, f"HostConfig.Binds[{i}]", home=home, rules=rules, realpath=realpath
            )
            if problem:
                return problem
    for i, mount in enumerate(_list(host.get("Mounts"), "HostConfig.Mounts")):
        if not isinstance(mount, dict):
            return f"HostConfig.Mounts[{i}]: must be a JSON object"
        field = f"HostConfig.Mounts[{i}]"
        if mount.get("Type", "volume") == "bind":
            problem = bind_refusal(
                str(mount.get("Source", "")), field, home=home, rules=rules, realpath=realpath
            )
            if problem:
                return problem
        options = ((mount.get("VolumeOptions") or {}).get("DriverConfig") or {}).get("Options")
        problem = volume_options_refusal(options, f"{field} driver option device")
        if problem:
            return problem
    return None


def volume_options_refusal(options: Any, field: str) -> str | None:
    """A local volume over a host path (`device=/…`) is a bind mount dockerd makes later, as
    root, after any check: users mount host folders with -v instead, where they are pinned."""
    if not isinstance(options, dict) or not options.get("device"):
        return None
    device = str(options["device"])
    if not device.startswith("/"):
        return None  # e.g. an NFS export "host:/path", not this host's files
    return (
        f"{field}: a volume over the host path {device} is not allowed; "
        "mount the folder directly (-v /home/you/folder:/path)"
    )


def _security_refusal(host: Mapping[str, Any], rules: CreateRules) -> str | None:
    if host.get("Privileged"):
        return "HostConfig.Privileged: privileged containers are not allowed on this server"
    for key, what in _HOST_NAMESPACES:
        if str(host.get(key) or "") == "host":
            return f"HostConfig.{key}: the host's {what} namespace is not allowed"
    for cap in _list(host.get("CapAdd"), "HostConfig.CapAdd"):
        name = str(cap).upper().removeprefix("CAP_")
        if name not in rules.allowed_capabilities:
            allowed = ", ".join(sorted(rules.allowed_capabilities)) or "none"
            return f"HostConfig.CapAdd: capability {cap} is not allowed (allowed: {allowed})"
    for opt in _list(host.get("SecurityOpt"), "HostConfig.SecurityOpt"):
        key, _, value = str(opt).replace(":", "=", 1).partition("=")
        switched_off = _UNCONFINED.get((key.strip(), value.strip()))
        if switched_off:
            return f"HostConfig.SecurityOpt: {opt} would switch off {switched_off}; not allowed"
    if host.get("CgroupParent"):
        return "HostConfig.CgroupParent: containers stay in Docker's cgroup; not allowed"
    return None


def _devices_refusal(host: Mapping[str, Any], rules: CreateRules) -> str | None:
    for i, device in enumerate(_list(host.get("Devices"), "HostConfig.Devices")):
        if not isinstance(device, dict):
            return f"HostConfig.Devices[{i}]: must be a JSON object"
        path = str(device.get("PathOnHost", ""))
        if _GPU_DEVICE.match(path):
            return f"HostConfig.Devices: {path} is a GPU device; {GPU_HINT}"
        if path not in rules.allowed_devices:
            return f"HostConfig.Devices: device {path} is not allowed on this server"
    if _list(host.get("DeviceCgroupRules"), "HostConfig.DeviceCgroupRules"):
        return "HostConfig.DeviceCgroupRules: device cgroup rules are not allowed"
    return None


def create_refusal(
    body: Mapping[str, Any],
    *,
    home: str | None,
    rules: CreateRules,
    realpath: Callable[[str], str] = os.path.realpath,
) -> str | None:
    """Why a non-admin may not create this container (naming the field), or None."""
    host = _mapping(body.get("HostConfig"), "HostConfig")
    return (
        _security_refusal(host, rules)
        or _devices_refusal(host, rules)
        or _mounts_refusal(host, home, rules, realpath)
    )


def referenced_containers(body: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(field, container) pairs a create borrows from: their owner must be the caller."""
    host = _mapping(body.get("HostConfig"), "HostConfig")
    found = []
    for entry in _list(host.get("VolumesFrom"), "HostConfig.VolumesFrom"):
        found.append(("HostConfig.VolumesFrom", str(entry).split(":", 1)[0]))
    for key in ("NetworkMode", "PidMode", "IpcMode"):
        value = str(host.get(key) or "")
        if value.startswith("container:"):
            found.append((f"HostConfig.{key}", value.split(":", 1)[1]))
    return [(field, ref) for field, ref in found if ref]


@dataclass(frozen=True)
class BindSource:
    """One host path a create mounts: where it sits in the body, and the path."""

    field: str  # e.g. HostConfig.Binds[0]
    key: tuple[str, int]  # ("Binds", 0) or ("Mounts", 2)
    path: str


def bind_sources(body: Mapping[str, Any]) -> list[BindSource]:
    """Every host path in Binds and bind-type Mounts (named volumes are not host paths)."""
    host = _mapping(body.get("HostConfig"), "HostConfig")
    found = []
    for i, bind in enumerate(_list(host.get("Binds"), "HostConfig.Binds")):
        source = str(bind).split(":", 1)[0]
        if source.startswith("/"):
            found.append(BindSource(f"HostConfig.Binds[{i}]", ("Binds", i), source))
    for i, mount in enumerate(_list(host.get("Mounts"), "HostConfig.Mounts")):
        if isinstance(mount, dict) and mount.get("Type", "volume") == "bind":
            found.append(
                BindSource(f"HostConfig.Mounts[{i}]", ("Mounts", i), str(mount.get("Source")))
            )
    return found


def with_bind_sources(
    body: Mapping[str, Any], replaced: Mapping[tuple[str, int], str]
) -> dict[str, Any]:
    """A copy of the body whose bind sources at `replaced`'s keys are the new paths."""
    out = copy.deepcopy(dict(body))
    host = out.get("HostConfig") or {}
    for (kind, index), path in replaced.items():
        if kind == "Binds":
            _, sep, rest = host["Binds"][index].partition(":")
            host["Binds"][index] = f"{path}{sep}{rest}"
        else:
            host["Mounts"][index]["Source"] = path
    return out


def named_volumes(body: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(field, volume name) for each named volume a create mounts: its owner must be the caller."""
    host = _mapping(body.get("HostConfig"), "HostConfig")
    found = []
    for i, bind in enumerate(_list(host.get("Binds"), "HostConfig.Binds")):
        source = str(bind).split(":", 1)[0]
        if source and not source.startswith("/"):
            found.append((f"HostConfig.Binds[{i}]", source))
    for i, mount in enumerate(_list(host.get("Mounts"), "HostConfig.Mounts")):
        if isinstance(mount, dict) and mount.get("Type", "volume") == "volume":
            if mount.get("Source"):
                found.append((f"HostConfig.Mounts[{i}]", str(mount["Source"])))
    return found


def exec_refusal(body: Mapping[str, Any]) -> str | None:
    """An exec may not be what a create may not be: privileged."""
    if body.get("Privileged"):
        return "Privileged: a privileged exec is not allowed on this server"
    return None


# --- the rewrite --------------------------------------------------------------------------------


def stamp_labels(labels: Any, stamps: Mapping[str, str]) -> dict[str, str]:
    """The client's labels without any ds01.* one, plus ours."""
    mine = _mapping(labels, "Labels")
    kept = {str(k): str(v) for k, v in mine.items() if not str(k).startswith("ds01.")}
    return {**kept, **stamps}


def rewrite_create(
    body: Mapping[str, Any],
    *,
    stamps: Mapping[str, str],
    ask: GpuAsk | None,
    devices: tuple[str, ...] = (),
    default_runtime: str = "runc",
) -> dict[str, Any]:
    """The body dockerd gets: our labels, and GPU requests naming exactly `devices`."""
    out = copy.deepcopy(dict(body))
    out["Labels"] = stamp_labels(body.get("Labels"), stamps)
    host = out.setdefault("HostConfig", {}) or {}
    out["HostConfig"] = host
    nvidia = nvidia_runtime_applies(body, default_runtime)
    if ask is None:
        if nvidia:  # no GPU asked: an image's NVIDIA_VISIBLE_DEVICES must not give one
            out["Env"] = _with_env(out.get("Env"), VISIBLE, "void")
        return out
    joined = ",".join(devices)
    if ask.source == "DeviceRequests":
        kept, capabilities, driver = [], [["gpu"]], ""
        for request in host.get("DeviceRequests") or []:
            if _is_gpu_request(request):
                capabilities = request.get("Capabilities") or capabilities
                driver = request.get("Driver") or driver
            else:
                kept.append(request)
        kept.append(
            {
                "Driver": driver,
                "Count": 0,
                "DeviceIDs": list(devices),
                "Capabilities": capabilities,
                "Options": {},
            }
        )
        host["DeviceRequests"] = kept
    if nvidia or ask.source == VISIBLE:
        out["Env"] = _with_env(out.get("Env"), VISIBLE, joined)
    out["Labels"].update({LABEL_MANAGED: "true", LABEL_DEVICES: joined})
    return out


def _with_env(env: Any, key: str, value: str) -> list[str]:
    kept = [e for e in (env or []) if not (isinstance(e, str) and e.partition("=")[0] == key)]
    return [*kept, f"{key}={value}"]


def owner_stamps(*, user: str, group: str, ctype: str, allocation: str = "") -> dict[str, str]:
    stamps = {LABEL_USER: user, LABEL_GROUP: group, LABEL_TYPE: ctype}
    if allocation:
        stamps[LABEL_ALLOCATION] = allocation
    return stamps


def profile_hint(
    named: tuple[str, ...], device_table: Callable[[], list[dict[str, Any]]]
) -> tuple[str | None, bool]:
    """(profile, whole GPUs) the named devices share, so `device=0:1` gets a slice of that size.

    Names the inventory does not know give no hint: the allocator then picks any device.
    """
    if not named:
        return None, False
    rows = device_table()
    kinds, profiles = set(), set()
    for name in named:
        row = next((r for r in rows if name in (r.get("index"), r.get("device_uuid"))), None)
        if row is None:
            return None, False
        kinds.add(row.get("kind"))
        profiles.add(row.get("profile") or "")
    if kinds == {"gpu"}:
        return None, True
    if kinds == {"mig"} and len(profiles) == 1:
        return profiles.pop() or None, False
    return None, False
