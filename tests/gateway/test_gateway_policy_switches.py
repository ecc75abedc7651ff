"""Policy switches of the gateway, through Debian's docker CLI as unprivileged users."""

from __future__ import annotations

import uuid

import pytest

from tests.gateway.clients import DEBIAN_DOCKER, require_docker_cli, run_as

pytestmark = pytest.mark.integration


def docker(stack, user, *args: str):
    cli = require_docker_cli(DEBIAN_DOCKER)
    return run_as(user, [cli, *args], env={"DOCKER_HOST": stack.docker_host})


def test_list_all_containers_off_shows_each_user_only_their_own(
    gateway_factory, unprivileged_users
):
    stack = gateway_factory(policy={"gateway": {"list_all_containers": False}})
    alice, bob = unprivileged_users
    names = {}
    for user in (alice, bob):
        names[user.name] = f"own-{user.name}-{uuid.uuid4().hex[:6]}"
        made = docker(
            stack, user, "create", "--name", names[user.name], "--network", "none", stack.image,
            "true",
        )  # fmt: skip
        assert made.returncode == 0, made.stderr
    for user, other in ((alice, bob), (bob, alice)):
        listed = docker(stack, user, "ps", "-a", "--format", "{{.Names}}").stdout.split()
        assert names[user.name] in listed and names[other.name] not in listed
    everything = {c.name for c in stack.gateway_client().containers.list(all=True)}
    assert set(names.values()) <= everything  # root, an admin, still sees all


def test_a_member_of_an_admin_group_is_unrestricted(gateway_factory, unprivileged_users):
    alice, bob = unprivileged_users
    stack = gateway_factory(
        policy={"users": {alice.name: "student", bob.name: "admin", "root": "admin"}}
    )
    name = f"alices-{uuid.uuid4().hex[:6]}"
    made = docker(
        stack, alice, "run", "-d", "--name", name, "--network", "none", stack.image, "sleep", "600"
    )
    assert made.returncode == 0, made.stderr
    assert docker(stack, bob, "stop", "-t", "0", name).returncode == 0  # an admin acts on any
    privileged = docker(  # create only: this sandbox's runc cannot start privileged ones
        stack, bob, "create", "--privileged", "--network", "none", stack.image, "true"
    )
    assert privileged.returncode == 0, privileged.stderr  # and is not limited at create
    mine = docker(stack, bob, "create", "--network", "none", stack.image, "true")
    labels = stack.docker.api.inspect_container(mine.stdout.strip())["Config"]["Labels"]
    assert labels["ds01.user"] == bob.name and labels["ds01.group"] == "admin"
    refused = docker(stack, alice, "run", "--rm", "--privileged", stack.image, "true")
    assert refused.returncode != 0 and "HostConfig.Privileged" in refused.stderr
