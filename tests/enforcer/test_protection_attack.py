"""An unprivileged user tries to make a GPU container protected; the enforcer stops it anyway.

The user reaches dockerd only through the gateway (as on a deployed host), names the container
like a protected service and labels it with a protected user; neither protects it.
"""

from __future__ import annotations

import time
import uuid

import pytest

from tests.enforcer.conftest import alert_for, make_policy, webhook
from tests.gateway.clients import DEBIAN_DOCKER, require_docker_cli, run_as, unprivileged_users
from tests.gateway.conftest import gateway_factory

__all__ = ["gateway_factory", "unprivileged_users"]  # fixtures from the gateway tests

pytestmark = pytest.mark.integration


def test_a_users_container_named_and_labelled_as_protected_is_stopped(
    gateway_factory, unprivileged_users, enforcer_factory, deadlines
):
    docker_cli = require_docker_cli(DEBIAN_DOCKER)
    alice = unprivileged_users[0]
    name = f"ds01-grafana-{uuid.uuid4().hex[:6]}"
    protected = {"names": [name], "users": ["ds01svc"]}
    stack = gateway_factory(policy={"protected": protected})
    made = run_as(
        alice,
        [docker_cli, "run", "-d", "--name", name, "--label", "ds01.user=ds01svc",
         "--gpus", "1", "--network", "none", stack.image, "sleep", "600"],
        env={"DOCKER_HOST": stack.docker_host},
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    box = stack.docker.containers.get(name)
    assert box.labels["ds01.user"] == alice.name  # the gateway overwrote the forged owner
    enforcer = enforcer_factory(policy=make_policy(protected=protected))
    deadlines.publish(box, idle=time.time() + 3600, runtime=time.time() - 5)

    enforcer.post("alerts", webhook(alert_for(box, reason="max_runtime")))

    [record] = enforcer.wait_records(box.id)
    assert record["decision"] == "stopped"
    assert record["user"] == alice.name
    box.reload()
    assert box.status == "exited"
