"""Gateway -> dockerd -> exporter -> Prometheus rules: what users make through the front door
is managed, typed and given its type's deadline; what bypasses it on a held device is not.

Real clients as unprivileged users (Debian's docker CLI, docker-compose 1.29) against the
gateway `ds01 up`'s supervisor started; assertions on Prometheus' own answers.
"""

from __future__ import annotations

import uuid

import pytest
import requests
from docker.types import DeviceRequest

from tests.gateway.clients import (
    DEBIAN_DOCKER,
    compose_binary,
    gpu_compose_file,
    require_docker_cli,
    run_as,
    write_as_owner,
)

pytestmark = [pytest.mark.e2e, pytest.mark.integration]
WAIT = 60.0  # bounds a hang


def unmanaged(cid: str) -> str:
    """DESIGN.md's unmanaged join, for one container."""
    return (
        f'ds01_container_gpu_device{{container_id="{cid}"}} '
        'unless on(container_id, device_uuid) ds01_allocation_device{state="bound"}'
    )


def query(prometheus: str, expr: str) -> list[dict]:
    answer = requests.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10)
    return answer.json()["data"]["result"]


def value_of(prometheus: str, expr: str) -> float | None:
    result = query(prometheus, expr)
    return float(result[0]["value"][1]) if result else None


def test_front_door_containers_are_managed_with_their_types_deadline_and_bypass_is_not(
    stack, docker_client, busybox_image, unprivileged_users, user_workdir, eventually
):
    docker_cli = require_docker_cli(DEBIAN_DOCKER)
    compose = compose_binary()
    alice, bob = unprivileged_users
    env = {"DOCKER_HOST": stack.endpoints.gateway_host}
    prometheus = stack.endpoints.prometheus

    name = f"chain-{uuid.uuid4().hex[:6]}"
    made = run_as(
        alice,
        [docker_cli, "run", "-d", "--name", name, "--gpus", "1", "--network", "none"]
        + [busybox_image, "sleep", "3600"],
        env=env,
    )
    assert made.returncode == 0, made.stderr
    project = user_workdir(bob)
    write_as_owner(
        bob,
        project / "docker-compose.yml",
        gpu_compose_file(busybox_image, service="train", command=["sleep", "3600"], count=1),
    )
    up = run_as(bob, [compose, "up", "-d"], env=env, cwd=project)
    assert up.returncode == 0, up.stderr
    ids = {
        "docker": docker_client.containers.get(name).id,
        "compose": docker_client.containers.list(
            filters={"label": "com.docker.compose.service=train"}
        )[0].id,
    }
    owners = {"docker": alice.name, "compose": bob.name}
    max_runtime = {"docker": 2 * 86400, "compose": 3 * 86400}

    for ctype, cid in ids.items():
        info = eventually(
            lambda cid=cid: query(prometheus, f'ds01_container_info{{container_id="{cid}"}}'),
            WAIT,
            f"{ctype} container in Prometheus",
        )
        labels = info[0]["metric"]
        assert labels["type"] == ctype and labels["user"] == owners[ctype]
        runtime = value_of(
            prometheus,
            f'ds01_container_runtime_deadline_timestamp_seconds{{container_id="{cid}"}}'
            f' - ds01_container_start_time_seconds{{container_id="{cid}"}}',
        )
        assert runtime == max_runtime[ctype]
        eventually(
            lambda cid=cid: query(
                prometheus, f'ds01_allocation_device{{state="bound",container_id="{cid}"}}'
            ),
            WAIT,
            f"{ctype} container's allocation bound in Prometheus",
        )
        assert not query(prometheus, unmanaged(cid))

    # The positive control: root bypasses the gateway onto alice's device.
    held = docker_client.containers.get(name).labels["ds01.gpu.devices"]
    bypass = docker_client.containers.run(
        busybox_image,
        ["sleep", "3600"],
        name=f"bypass-{uuid.uuid4().hex[:6]}",
        network_mode="none",
        detach=True,
        device_requests=[DeviceRequest(device_ids=[held], capabilities=[["gpu"]])],
    )
    eventually(
        lambda: query(prometheus, unmanaged(bypass.id)),
        WAIT,
        "the bypassing container counted as unmanaged",
    )
    for cid in ids.values():  # and the front-door ones still are not
        assert not query(prometheus, unmanaged(cid))
    run_as(bob, [compose, "down"], env=env, cwd=project)
