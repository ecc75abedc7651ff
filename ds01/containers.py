"""What a container is, from its `docker inspect` data: type, owner, GPU devices, managed claim.

Pure functions over the dict the Docker API returns. Labels are user input: they identify a
container, they never exempt it (exemptions and protection come from the policy only).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .gpu import GpuDevice, resolve_device_spec

LABEL_MANAGED = "ds01.managed"
LABEL_USER = "ds01.user"
LABEL_ALLOCATION = "ds01.allocation"
LABEL_DEVICES = "ds01.gpu.devices"
LABEL_TYPE = "ds01.type"

_HOME = re.compile(r"^/home/([^/]+)")
_NO_GPU_VALUES = ("", "void", "none")


@dataclass(frozen=True)
class ContainerFacts:
    container_id: str
    name: str
    image: str
    type: str  # ds01 | devcontainer | compose | docker
    user: str  # "unknown" when no owner can be derived
    managed: bool  # what the ds01.* labels claim; the rules decide the truth
    allocation: str  # "" when none is claimed
    gpu_devices: tuple[str, ...]  # device UUIDs (or unresolved names), empty = no GPU access
    running: bool
    started_at: float | None  # Unix seconds of the last start
    created_at: float | None
    # The ds01.user label as found: the gateway's stamp (users reach dockerd only through it),
    # None when the container has none (made on dockerd's root-only socket, by root).
    stamped_user: str | None = None

    @property
    def has_gpu(self) -> bool:
        return bool(self.gpu_devices)


def container_type(labels: Mapping[str, str]) -> str:
    """The client that made the container, first match wins (DESIGN.md): devcontainer labels,
    compose labels, `ds01.type=ds01` (only `container deploy` stamps it), else docker.

    `ds01.managed=true` says who allocated the GPU, not what made the container: a devcontainer
    started through our tools keeps its 7-day limit, a plain `docker run` its 2 days.
    """
    if "devcontainer.local_folder" in labels or "devcontainer.config_file" in labels:
        return "devcontainer"
    if "com.docker.compose.project" in labels:
        return "compose"
    if labels.get(LABEL_TYPE) == "ds01":
        return "ds01"
    return "docker"


def container_owner(labels: Mapping[str, str], mounts: Iterable[Mapping[str, Any]]) -> str:
    """ds01.user, then a /home/<u> path in devcontainer/compose labels, then a home bind mount."""
    if labels.get(LABEL_USER):
        return labels[LABEL_USER]
    for key in ("devcontainer.local_folder", "com.docker.compose.project.working_dir"):
        match = _HOME.match(labels.get(key, ""))
        if match:
            return match.group(1)
    for mount in mounts:
        if mount.get("Type", "bind") == "bind":
            match = _HOME.match(mount.get("Source", ""))
            if match:
                return match.group(1)
    return "unknown"


def nvidia_runtime_applies(runtime: str | None, default_runtime: str | None) -> bool:
    """The container runs under the nvidia runtime: its own `HostConfig.Runtime`, or the
    daemon's `DefaultRuntime` when it names none (`nvidia`, `nvidia-cdi`, `nvidia-legacy`)."""
    effective = runtime or default_runtime or ""
    return effective.startswith("nvidia")


def gpu_device_specs(
    inspect: Mapping[str, Any], *, default_runtime: str | None = None
) -> tuple[str, ...]:
    """Every way the container asks for GPUs, as NVIDIA_VISIBLE_DEVICES-style specs.

    NVIDIA_VISIBLE_DEVICES counts only under the nvidia runtime: CUDA images carry it in
    their image env, and under runc it gives them no GPU at all.
    """
    host = inspect.get("HostConfig") or {}
    config = inspect.get("Config") or {}
    nvidia = nvidia_runtime_applies(host.get("Runtime"), default_runtime)
    specs: list[str] = []
    for request in host.get("DeviceRequests") or ():
        capabilities = request.get("Capabilities") or []
        if not any("gpu" in group for group in capabilities):
            continue
        ids = request.get("DeviceIDs") or []
        if ids:
            specs.append(",".join(ids))
        elif request.get("Count", 0) == -1 or request.get("Count", 0) > 0:
            specs.append("all" if request.get("Count") == -1 else f"count={request['Count']}")
    env = dict(_split_env(config.get("Env") or ()))
    visible = env.get("NVIDIA_VISIBLE_DEVICES")
    if nvidia and visible is not None and visible.strip().lower() not in _NO_GPU_VALUES:
        specs.append(visible.strip())
    elif host.get("Runtime") == "nvidia" and visible is None:
        specs.append("all")  # asked for the nvidia runtime by name, with no variable set
    for device in host.get("Devices") or ():
        for path in (device.get("PathOnHost", ""), device.get("PathInContainer", "")):
            match = re.fullmatch(r"/dev/nvidia(\d+)", path)
            if match:
                specs.append(match.group(1))
                break
    specs.extend(raw_device_specs(host, inspect.get("Mounts") or ()))
    return tuple(specs)


_NVIDIA_MAJOR = 195  # /dev/nvidia0…N and /dev/nvidiactl
_ANY_CHAR_RULE = re.compile(rf"^(a|c (\*|{_NVIDIA_MAJOR}):)")


def raw_device_specs(host: Mapping[str, Any], mounts: Iterable[Mapping[str, Any]]) -> list[str]:
    """GPU access around the runtime: /dev/nvidia* bind mounts, --privileged (every device
    node), and a device cgroup rule for NVIDIA's major number (a process may mknod the node)."""
    specs: list[str] = []
    for mount in mounts:
        for path in (str(mount.get("Source", "")), str(mount.get("Destination", ""))):
            match = re.fullmatch(r"/dev/nvidia(\d+)", path)
            if match:
                specs.append(match.group(1))
                break
            if path in ("/dev", "/dev/"):  # the whole /dev: every device node
                specs.append("all")
                break
    if host.get("Privileged"):
        specs.append("all")
    if any(_ANY_CHAR_RULE.match(str(rule)) for rule in host.get("DeviceCgroupRules") or ()):
        specs.append("all")
    return specs


def _split_env(env: Iterable[str]) -> Iterable[tuple[str, str]]:
    for item in env:
        key, _, value = item.partition("=")
        yield key, value


def resolve_gpu_devices(specs: Iterable[str], inventory: Iterable[GpuDevice]) -> tuple[str, ...]:
    """Device UUIDs for the specs; `count=N` takes the first N devices, as the runtime does."""
    devices = tuple(inventory)
    result: list[str] = []
    for spec in specs:
        if spec.startswith("count="):
            wanted = int(spec.split("=", 1)[1])
            resolved = tuple(d.device_uuid for d in devices[:wanted]) or (spec,)
        else:
            resolved = resolve_device_spec(spec, devices)
        result.extend(u for u in resolved if u not in result)
    return tuple(result)


def parse_docker_time(value: str | None) -> float | None:
    """Docker's RFC 3339 with nanoseconds -> Unix seconds; None for the zero time."""
    if not value or value.startswith("0001-01-01"):
        return None
    text = value.replace("Z", "+00:00")
    match = re.match(r"^(.*T\d\d:\d\d:\d\d)(\.\d+)?(.*)$", text)
    if match:
        fraction = (match.group(2) or "")[:7]
        text = f"{match.group(1)}{fraction}{match.group(3)}"
    return datetime.fromisoformat(text).timestamp()


def classify(
    inspect: Mapping[str, Any],
    inventory: Iterable[GpuDevice],
    *,
    default_runtime: str | None = None,
) -> ContainerFacts:
    """All we need to know about one container, from one inspect dict (and the daemon's
    `DefaultRuntime`, which decides whether NVIDIA_VISIBLE_DEVICES alone gives GPU access)."""
    config = inspect.get("Config") or {}
    state = inspect.get("State") or {}
    labels: Mapping[str, str] = config.get("Labels") or {}
    ctype = container_type(labels)
    return ContainerFacts(
        container_id=inspect["Id"],
        name=str(inspect.get("Name", "")).lstrip("/"),
        image=str(config.get("Image", "")),
        type=ctype,
        user=container_owner(labels, inspect.get("Mounts") or ()),
        managed=labels.get(LABEL_MANAGED) == "true",
        allocation=labels.get(LABEL_ALLOCATION, ""),
        gpu_devices=resolve_gpu_devices(
            gpu_device_specs(inspect, default_runtime=default_runtime), inventory
        ),
        running=bool(state.get("Running")),
        started_at=parse_docker_time(state.get("StartedAt")),
        created_at=parse_docker_time(inspect.get("Created")),
        stamped_user=str(labels[LABEL_USER]) if LABEL_USER in labels else None,
    )
