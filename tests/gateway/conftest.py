"""A gateway in front of the private dockerd, with a real allocator that follows it.

`gateway_stack` (one per test module) and `gateway_factory` (per test, with policy overrides)
give a socket any local user can open; DOCKER_HOST=unix://<socket> points real clients at it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from allocator.client import AllocatorClient
from allocator.gateway import GatewayServer, GatewaySettings
from allocator.gateway_backends import AllocatorGrants, DockerUnavailable
from allocator.runtime import AllocatorRuntime, build_runtime, start_runtime
from allocator.service import Settings
from ds01.gpu import GpuDevice
from ds01.gpu.sim import SimBackend
from ds01.policy import Policy, load_policy
from tests.gateway.clients import unprivileged_users, user_workdir
from tests.harness.containers import remove_container

__all__ = ["unprivileged_users", "user_workdir"]  # fixtures every gateway test may use

TEST_USERS = ("ds01alice", "ds01bob")
BASE_POLICY: dict[str, Any] = {
    "gpu_wait": "20s",
    "gpu_hold_after_stop": "2s",
    "reservation_ttl": "60s",
    "users": {"ds01alice": "student", "ds01bob": "student", "root": "admin"},
}


def write_topology(folder: Path, gpus: int = 2, mig_per_gpu: int = 4) -> Path:
    """`gpus` H200s split into `mig_per_gpu` 1g.18gb instances each, plus one whole H200."""
    entries: list[dict[str, Any]] = [
        {
            "model": "NVIDIA H200",
            "memory": "141gb",
            "mig": [
                {"profile": "1g.18gb", "gi_id": 9 + i, "mig_index": i} for i in range(mig_per_gpu)
            ],
        }
        for _ in range(gpus)
    ]
    entries.append({"model": "NVIDIA H200", "memory": "141gb"})
    path = folder / "topology.yaml"
    path.write_text(yaml.safe_dump({"seed": "gateway-test", "gpus": entries}))
    return path


@dataclass
class GatewayStack:
    folder: Path
    socket_path: Path
    policy: Policy
    runtime: AllocatorRuntime
    server: GatewayServer
    docker: Any  # the Docker SDK client on dockerd itself (root, no gateway)
    image: str
    devices: tuple[GpuDevice, ...]

    @property
    def docker_host(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def allocator(self):
        return self.runtime.allocator

    def allocator_client(self) -> AllocatorClient:
        return AllocatorClient(str(self.runtime.socket_path))

    def gateway_client(self, timeout: int = 60):
        import docker

        return docker.DockerClient(base_url=self.docker_host, timeout=timeout)

    def device(self, index: str) -> GpuDevice:
        return next(d for d in self.devices if d.index == index)

    def stop(self) -> None:
        """Stop both; bind pins of removed containers are unmounted before the folder goes."""
        try:
            self.server.release_unused_pins(older_than=0)
        except DockerUnavailable:
            pass  # a stack pointed at no dockerd made no pins
        self.server.close()
        self.runtime.stop()

    def remove_containers(self) -> None:
        """Remove every container on the engine (the next test starts from none)."""
        for container in self.docker.containers.list(all=True):
            try:
                remove_container(container)
            except Exception:  # noqa: BLE001 - already gone
                continue


def start_gateway_stack(
    *,
    docker_client: Any,
    dockerd_socket: str,
    image: str,
    policy: dict[str, Any] | None = None,
    settings: GatewaySettings = GatewaySettings(),
) -> GatewayStack:
    folder = Path(tempfile.mkdtemp(prefix="ds01g-", dir="/tmp"))
    os.chmod(folder, 0o755)  # unprivileged users reach the socket through it
    data = {**BASE_POLICY, **(policy or {})}
    gateway_section = dict(data.pop("gateway", {}))
    gateway_section.setdefault("socket", str(folder / "docker.sock"))
    gateway_section.setdefault("docker_socket", dockerd_socket)
    data["gateway"] = gateway_section
    policy_path = folder / "ds01.yaml"
    policy_path.write_text(yaml.safe_dump(data))
    loaded = load_policy(policy_path)
    backend = SimBackend.from_files(write_topology(folder), folder / "sim-state.json")
    runtime = start_runtime(
        build_runtime(
            loaded,
            db_path=folder / "allocator.sqlite",
            socket_path=folder / "allocator.sock",
            backend=backend,
            docker_client=docker_client,
            settings=Settings(ticket_grace=10.0, inventory_refresh=0),
            tick=0.05,
            history_log=folder / "allocator-history.jsonl",
        )
    )
    grants = AllocatorGrants(AllocatorClient(str(runtime.socket_path)), poll=0.5)
    server = GatewayServer(
        socket_path=loaded.gateway.socket,
        docker_socket=loaded.gateway.docker_socket,
        policy=loaded,
        grants=grants,
        settings=settings,
    ).start_in_thread()
    return GatewayStack(
        folder=folder,
        socket_path=Path(loaded.gateway.socket),
        policy=loaded,
        runtime=runtime,
        server=server,
        docker=docker_client,
        image=image,
        devices=tuple(backend.devices()),
    )


@pytest.fixture(scope="module")
def gateway_stack(dockerd, docker_client, busybox_image) -> Iterator[GatewayStack]:
    stack = start_gateway_stack(
        docker_client=docker_client, dockerd_socket=str(dockerd.socket_path), image=busybox_image
    )
    yield stack
    stack.remove_containers()
    stack.stop()
    shutil.rmtree(stack.folder, ignore_errors=True)


@pytest.fixture
def gateway_factory(dockerd, docker_client, busybox_image) -> Iterator[Callable[..., GatewayStack]]:
    """Factory: a gateway stack with policy overrides; stopped (and its containers removed)."""
    started: list[GatewayStack] = []

    def start(**kwargs: Any) -> GatewayStack:
        stack = start_gateway_stack(
            docker_client=docker_client,
            dockerd_socket=str(dockerd.socket_path),
            image=busybox_image,
            **kwargs,
        )
        started.append(stack)
        return stack

    yield start
    for stack in started:
        stack.remove_containers()
        stack.stop()
        shutil.rmtree(stack.folder, ignore_errors=True)
