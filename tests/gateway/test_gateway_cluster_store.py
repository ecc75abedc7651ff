"""The gateway in front of an allocator on the cluster store: with PostgreSQL down, a GPU
`docker create` fails with the store's message (the Docker error the user reads), a plain
container still runs, and GPU creates work again once PostgreSQL is back."""

from __future__ import annotations

import os
import subprocess
import threading

import pytest

from tests.gateway.clients import DEBIAN_DOCKER, require_docker_cli, user_env

pytestmark = pytest.mark.integration
OUTAGE = float(os.environ.get("DS01_TEST_PG_OUTAGE", "3"))  # seconds PostgreSQL stays down


def _docker(cli: str, host: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [cli, *args],
        env=user_env("root", {"DOCKER_HOST": host}),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_postgres_down_is_the_docker_error_and_gpu_creates_come_back(
    gateway_factory, postgres_factory
):
    cli = require_docker_cli(DEBIAN_DOCKER)
    server = postgres_factory()
    stack = gateway_factory(
        policy={
            "cluster": {"store": "postgres", "postgres_dsn": server.create_database("gw")},
            "services": {"node": "n1"},
        }
    )
    gpu = ("create", "--gpus", "1", "--network", "none", stack.image, "true")
    assert _docker(cli, stack.docker_host, *gpu).returncode == 0
    server.stop()
    refused = _docker(cli, stack.docker_host, *gpu)
    assert refused.returncode != 0
    assert "allocation store (PostgreSQL at 127.0.0.1" in refused.stderr
    assert "retry" in refused.stderr
    plain = _docker(cli, stack.docker_host, "run", "--rm", "--network", "none", stack.image, "true")
    assert plain.returncode == 0, plain.stderr
    threading.Event().wait(OUTAGE)
    server.start()
    again = _docker(cli, stack.docker_host, *gpu)
    assert again.returncode == 0, again.stderr
