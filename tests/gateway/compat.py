"""The compatibility matrix's shared parts: the gateway as the users see it, and the checks.

A matrix module imports `matrix` and `remove_users_containers` (fixtures, picked up by name)
and gets one gateway stack per module; each case leaves no container or allocation behind.
"""

from __future__ import annotations

import contextlib
import json
import queue
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from allocator.model import LIVE_STATES
from ds01.containers import LABEL_ALLOCATION, LABEL_DEVICES, LABEL_TYPE, LABEL_USER
from tests.gateway.clients import (
    CompatUser,
    cli_supports_buildkit,
    docker_clis,
    ensure_devcontainer_image,
    run_as,
)
from tests.harness.containers import remove_container
from tests.harness.waiting import eventually

CLIS = docker_clis()
CLI_IDS = [label for label, _ in CLIS]
# (label, cli, DOCKER_BUILDKIT): BuildKit only where the CLI has it (newer CLIs need buildx)
BUILDS = [
    pytest.param(label, cli, kit, id=f"{label}-{'buildkit' if kit == '1' else 'legacy'}")
    for label, cli in CLIS
    for kit in ("0", "1")
    if kit == "0" or cli_supports_buildkit(cli)
]


@dataclass(frozen=True)
class Matrix:
    """What every case needs: where the gateway listens and how to look behind it."""

    docker_host: str
    docker: Any  # SDK client on dockerd itself (root), to check what the gateway made
    allocator: Any  # AllocatorClient with admin rights
    service: Any  # the allocator itself (in this process): who waits in its queue
    image: str
    dev_image: str
    uuids: frozenset[str]
    alice: CompatUser
    bob: CompatUser
    quota: int  # the users' group's max_gpus


@pytest.fixture(scope="module")
def matrix(gateway_stack, unprivileged_users) -> Matrix:
    stack = gateway_stack
    return Matrix(
        docker_host=stack.docker_host,
        docker=stack.docker,
        allocator=stack.allocator_client(),
        service=stack.allocator,
        image=stack.image,
        dev_image=ensure_devcontainer_image(stack.docker),
        uuids=frozenset(device.device_uuid for device in stack.devices),
        alice=unprivileged_users[0],
        bob=unprivileged_users[1],
        quota=stack.policy.group_of(unprivileged_users[0].name).max_gpus,
    )


@pytest.fixture(autouse=True)
def remove_users_containers(matrix: Matrix) -> Iterator[None]:
    """Each case starts clean and leaves nothing: the matrix's users' containers go."""
    yield
    for user in (matrix.alice, matrix.bob):
        for container in matrix.docker.containers.list(
            all=True, filters={"label": f"{LABEL_USER}={user.name}"}
        ):
            remove_container(container)
    for allocation in matrix.allocator.allocations(everyone=True):
        if allocation["state"] in LIVE_STATES:  # no hold period between cases: quota is 2
            matrix.allocator.release(allocation["id"])


def docker_as(matrix: Matrix, user: CompatUser, cli: str, *args: str, **kwargs):
    env = {"DOCKER_HOST": matrix.docker_host, **kwargs.pop("env", {})}
    return run_as(user, [cli, *args], env=env, **kwargs)


def ok(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, f"rc={done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def assert_gpu_container(
    matrix: Matrix, ref: str, *, user: CompatUser, ctype: str, count: int, runtime: bool = False
) -> tuple[str, ...]:
    """The container names exactly its allocated devices (label, and DeviceRequests or, for the
    nvidia runtime form, NVIDIA_VISIBLE_DEVICES), is the caller's, and is bound."""
    attrs = matrix.docker.api.inspect_container(ref)
    labels = attrs["Config"]["Labels"]
    assert labels[LABEL_USER] == user.name
    assert labels[LABEL_TYPE] == ctype
    devices = tuple(labels[LABEL_DEVICES].split(","))
    assert len(devices) == count and set(devices) <= matrix.uuids
    gpu_requests = [
        r for r in attrs["HostConfig"]["DeviceRequests"] or [] if ["gpu"] in r["Capabilities"]
    ]
    if runtime:
        visible = [e for e in attrs["Config"]["Env"] if e.startswith("NVIDIA_VISIBLE_DEVICES=")]
        assert visible == ["NVIDIA_VISIBLE_DEVICES=" + ",".join(devices)]
        assert gpu_requests == []
    else:
        assert [r["DeviceIDs"] for r in gpu_requests] == [list(devices)]
    allocation_id = labels[LABEL_ALLOCATION]

    def bound() -> dict | None:
        allocation = matrix.allocator.get(allocation_id)
        return allocation if allocation["state"] == "bound" else None

    allocation = eventually(bound, 30, f"allocation {allocation_id} bound to {ref}")
    assert allocation["user"] == user.name
    assert allocation["container_id"] == attrs["Id"]
    assert tuple(allocation["devices"]) == devices
    return devices


def compose_text(image: str, gpu: dict) -> str:
    """One service asking for GPUs as `gpu` says (a deploy device, or runtime + environment)."""
    service = {"image": image, "command": ["sleep", "3600"], "network_mode": "none"}
    if "runtime" in gpu:  # the 2.x file format's form
        return json.dumps({"version": "2.4", "services": {"gpu": {**service, **gpu}}})
    service["deploy"] = {"resources": {"reservations": {"devices": [gpu]}}}
    return json.dumps({"version": "3.8", "services": {"gpu": service}})  # JSON is YAML


def running_container(matrix: Matrix, user: CompatUser, cli: str, *command: str) -> str:
    """A container of `user` made through the gateway (no GPU), running `command`."""
    name = f"compat-{uuid.uuid4().hex[:8]}"
    args = ["run", "--detach", "--name", name, "--network", "none", matrix.dev_image]
    ok(docker_as(matrix, user, cli, *args, *(command or ("sleep", "3600"))))
    return name


class LineReader:
    """Lines of a running client's stdout, as they arrive (a thread feeds a queue)."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.process, self.lines = process, queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def next(self, timeout: float = 30) -> str | None:
        """The next line; None once the client has ended its output."""
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no line from {self.process.args} in {timeout:g}s") from None

    def stop(self) -> str:
        self.process.terminate()
        self.process.wait(timeout=30)
        return self.process.stderr.read()


@contextlib.contextmanager
def every_gpu_taken(matrix: Matrix) -> Iterator[None]:
    """An unmanaged container on dockerd holding every device, until the block ends."""
    from docker.types import DeviceRequest

    blocker = matrix.docker.containers.run(
        matrix.image,
        ["sleep", "3600"],
        network_mode="none",
        detach=True,
        device_requests=[DeviceRequest(device_ids=sorted(matrix.uuids), capabilities=[["gpu"]])],
    )
    try:
        eventually(
            lambda: all(d["state"] == "busy" for d in matrix.allocator.devices()),
            30,
            "the allocator to see every device busy",
        )
        yield
    finally:
        remove_container(blocker)


def waiting_in_queue(matrix: Matrix, user: CompatUser) -> bool:
    return matrix.service.usage(user.name)["waiting"] > 0
