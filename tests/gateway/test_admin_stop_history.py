"""An admin's `docker stop` of someone's container through the gateway is recorded for its
owner, who then reads "an admin stopped it" in `container history` (issue 15, reason "admin")."""

from __future__ import annotations

import uuid

import pytest

from allocator.client import AllocatorClient
from tests.gateway.clients import (
    DEBIAN_DOCKER,
    call_as,
    require_docker_cli,
    run_as,
    unprivileged_users,  # noqa: F401 - a fixture
)

pytestmark = pytest.mark.integration


def history_of(socket_path: str) -> list[dict]:
    return AllocatorClient(socket_path).history()


def test_an_admins_docker_stop_is_in_the_owners_history_but_the_owners_own_is_not(
    gateway_stack,
    unprivileged_users,  # noqa: F811
):
    docker_cli = require_docker_cli(DEBIAN_DOCKER)
    alice = unprivileged_users[0]
    env = {"DOCKER_HOST": gateway_stack.docker_host}
    names = [f"adm-{uuid.uuid4().hex[:6]}" for _ in range(2)]
    for name in names:
        made = run_as(
            alice,
            [docker_cli, "run", "-d", "--name", name, "--network", "none",
             gateway_stack.image, "sleep", "600"],
            env=env,
        )  # fmt: skip
        assert made.returncode == 0, made.stderr
    # root (an admin) stops the first; alice stops the second herself
    gateway_stack.gateway_client().containers.get(names[0]).stop(timeout=0)
    assert run_as(alice, [docker_cli, "stop", "-t", "0", names[1]], env=env).returncode == 0

    socket_path = str(gateway_stack.runtime.socket_path)
    stops = [r for r in call_as(alice, history_of, socket_path) if r["kind"] == "stop"]
    assert [(r["container"], r["reason"]) for r in stops] == [(names[0], "admin")]
    assert stops[0]["detail"] == "docker stop by root"
    container_id = gateway_stack.docker.api.inspect_container(names[0])["Id"]
    assert stops[0]["container_id"] == container_id
