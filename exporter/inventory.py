"""The container inventory: one full listing at (re)connect, then the Docker events stream.

The collector reads `Inventory.entries()` each cycle; only the watcher thread talks to Docker.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ds01.containers import ContainerFacts, classify
from ds01.docker_events import EventFollower
from ds01.dockerio import DockerLink

__all__ = ["DockerLink", "DockerWatcher", "Inventory", "KnownContainer", "docker_inspector"]
from ds01.gpu import GpuDevice

from .health import ErrorCounters

logger = logging.getLogger(__name__)

# Events that can change what we know of a container; anything else (exec_*, health, …) is noise.
WATCHED_ACTIONS = frozenset({"start", "die", "destroy", "rename", "update", "restart"})

Inspect = Callable[[str], Mapping[str, Any] | None]  # None: the container no longer exists


@dataclass(frozen=True)
class Mount:
    destination: str  # path inside the container
    source: str  # path on the host ("" for tmpfs and the like)
    type: str


@dataclass(frozen=True)
class KnownContainer:
    """One container as the exporter knows it: classified facts plus what keep-alive needs."""

    facts: ContainerFacts
    mounts: tuple[Mount, ...] = ()


def known_container(
    inspect: Mapping[str, Any], devices: Iterable[GpuDevice], default_runtime: str | None = None
) -> KnownContainer:
    mounts = tuple(
        Mount(str(m.get("Destination", "")), str(m.get("Source") or ""), str(m.get("Type", "")))
        for m in inspect.get("Mounts") or ()
    )
    return KnownContainer(classify(inspect, devices, default_runtime=default_runtime), mounts)


class Inventory:
    """Thread-safe map of container id -> KnownContainer; `ready` after the first full listing."""

    def __init__(self, inspect: Inspect, devices: Iterable[GpuDevice]) -> None:
        self._inspect = inspect
        self._devices = tuple(devices)
        self._lock = threading.Lock()
        self._containers: dict[str, KnownContainer] = {}
        self._ready = False
        self.default_runtime: str | None = None  # dockerd's, set by the watcher at each listing

    @property
    def ready(self) -> bool:
        return self._ready

    def entries(self) -> tuple[KnownContainer, ...]:
        with self._lock:
            return tuple(self._containers.values())

    def replace_all(self, inspects: Iterable[Mapping[str, Any]]) -> None:
        """Install a full listing: containers not in it are gone."""
        fresh = {}
        for data in inspects:
            entry = known_container(data, self._devices, self.default_runtime)
            fresh[entry.facts.container_id] = entry
        with self._lock:
            self._containers = fresh
            self._ready = True

    def put(self, data: Mapping[str, Any]) -> None:
        entry = known_container(data, self._devices, self.default_runtime)
        with self._lock:
            self._containers[entry.facts.container_id] = entry

    def remove(self, container_id: str) -> None:
        with self._lock:
            self._containers.pop(container_id, None)

    def apply_event(self, event: Mapping[str, Any]) -> None:
        """One Docker event: re-inspect the container, or forget it when destroyed.

        Raises whatever the inspect call raises (the watcher then reconnects and relists).
        """
        if event.get("Type", "container") != "container":
            return
        action = str(event.get("Action") or event.get("status") or "")
        container_id = (event.get("Actor") or {}).get("ID") or event.get("id")
        if action not in WATCHED_ACTIONS or not container_id:
            return
        if action == "destroy":
            self.remove(container_id)
            return
        data = self._inspect(container_id)
        if data is None:
            self.remove(container_id)
        else:
            self.put(data)
        logger.debug("container %s: %s", container_id[:12], action)


def docker_inspector(docker_client: Callable[[], Any]) -> Inspect:
    """`docker inspect` through the API client; None when the container is gone."""
    import docker

    def inspect(container_id: str) -> Mapping[str, Any] | None:
        try:
            return docker_client().api.inspect_container(container_id)
        except docker.errors.NotFound:
            return None

    return inspect


class DockerWatcher:
    """Follows Docker for the inventory: events stream first, then a full relist, then events.

    Any failure (Docker down, stream ended) is counted under source "docker", logged once per
    outage, and followed by a reconnect and a full relist, so the inventory catches up.
    """

    def __init__(
        self,
        docker_client: Callable[[], Any],
        inventory: Inventory,
        errors: ErrorCounters,
        *,
        retry_interval: float = 5.0,
    ) -> None:
        self._client = docker_client
        self._inventory = inventory
        self._inspect = docker_inspector(docker_client)
        self._follower = EventFollower(
            name="exporter",
            subscribe=lambda: self._client().api.events(
                filters={"type": ["container"]}, decode=True
            ),
            catch_up=self.relist,
            apply=inventory.apply_event,
            retry=retry_interval,
            on_failure=lambda _reason: errors.add("docker"),
            log=logger,
        )

    @property
    def connected(self) -> bool:
        return self._follower.connected

    def start(self) -> None:
        self._follower.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._follower.stop(timeout)

    def relist(self) -> None:
        """Full listing: every container, running or not (a stopped one keeps its clock)."""
        info = self._client().info()
        self._inventory.default_runtime = str(info.get("DefaultRuntime") or "runc")
        listed = self._client().api.containers(all=True, quiet=True)
        inspects = []
        for item in listed:
            data = self._inspect(item["Id"])
            if data is not None:
                inspects.append(data)
        self._inventory.replace_all(inspects)
        logger.info("inventory: %d containers listed", len(inspects))
