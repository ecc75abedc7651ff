"""Baseline for the compatibility matrix: each real client against a plain private dockerd.

What passes here and fails through the gateway is the gateway's fault, not the client's. The
clients run as root here (dockerd's socket is root-only); the users' side is checked too:
they exist, are outside the docker group, and cannot reach dockerd directly.
"""

from __future__ import annotations

import json
import os
import uuid

import pytest

from tests.gateway.clients import (
    CompatUser,
    call_as,
    compose_binary,
    devcontainer_binary,
    docker_clis,
    ensure_devcontainer_image,
    require_docker_cli,
    run_as,
    run_in_pty_as,
)
from tests.gateway.clients import unprivileged_users as _users_fixture
from tests.gateway.compat import BUILDS
from tests.harness.containers import remove_named

pytestmark = pytest.mark.integration
unprivileged_users = _users_fixture  # the session fixture, used by name

CLIS = docker_clis()
GPU_FORMS = [
    ("all", {"Count": -1, "DeviceIDs": []}),
    ("2", {"Count": 2, "DeviceIDs": []}),
    ('"device=0:0,0:1"', {"Count": 0, "DeviceIDs": ["0:0", "0:1"]}),
]


def _ping_as_sdk(url: str) -> str:
    import docker

    try:
        docker.DockerClient(base_url=url, timeout=10).ping()
    except docker.errors.DockerException as exc:
        return f"refused: {exc}"
    return "answered"


def test_users_are_themselves_and_cannot_reach_dockerd(
    unprivileged_users: tuple[CompatUser, ...], dockerd
) -> None:
    for user in unprivileged_users:
        assert run_as(user, ["id", "-u"]).stdout.strip() == str(user.uid)
        assert "docker" not in run_as(user, ["id", "-Gn"]).stdout.split()
        assert call_as(user, os.getuid) == user.uid
        direct = run_as(user, [CLIS[0][1], "ps"], env={"DOCKER_HOST": dockerd.url})
        assert direct.returncode != 0 and "permission denied" in direct.stderr
        assert call_as(user, _ping_as_sdk, dockerd.url).startswith("refused")


def _device_request(docker_client, container_id: str) -> dict:
    requests = docker_client.api.inspect_container(container_id)["HostConfig"]["DeviceRequests"]
    assert len(requests) == 1
    return requests[0]


@pytest.mark.parametrize(("label", "cli"), CLIS, ids=[label for label, _ in CLIS])
@pytest.mark.parametrize(("form", "expected"), GPU_FORMS, ids=["all", "count", "ids"])
def test_docker_cli_gpu_forms(docker_client, busybox_image, dockerd, label, cli, form, expected):
    require_docker_cli(cli)
    name = f"compat-{uuid.uuid4().hex[:8]}"
    created = run_as(
        "root",
        [cli, "create", "--name", name, "--network", "none", "--gpus", form, busybox_image, "true"],
        env={"DOCKER_HOST": dockerd.url},
    )
    assert created.returncode == 0, created.stderr
    try:
        request = _device_request(docker_client, name)
        assert {key: request[key] or [] for key in expected} == {
            key: value or [] for key, value in expected.items()
        }
        assert request["Capabilities"] == [["gpu"]]
    finally:
        remove_named(docker_client, name)


@pytest.mark.parametrize(("label", "cli"), CLIS, ids=[label for label, _ in CLIS])
def test_docker_cli_run_it_on_a_pty(docker_client, busybox_image, dockerd, label, cli):
    require_docker_cli(cli)
    image = ensure_devcontainer_image(docker_client)
    done = run_in_pty_as(
        "root",
        [cli, "run", "-it", "--rm", "--network", "none", image, "sh"],
        keystrokes="echo tty-$((6*7)); tty; exit 3\n",
        env={"DOCKER_HOST": dockerd.url},
    )
    assert done.returncode == 3, done.stdout + done.stderr
    assert "tty-42" in done.stdout and "/dev/pts/" in done.stdout


def _compose_file(image: str) -> str:
    service = {
        "image": image,
        "command": ["sleep", "3600"],
        "network_mode": "none",
    }
    devices = {
        "all": {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]},
        "ids": {"driver": "nvidia", "device_ids": ["0:0", "0:1"], "capabilities": ["gpu"]},
    }
    services = {
        name: {**service, "deploy": {"resources": {"reservations": {"devices": [device]}}}}
        for name, device in devices.items()
    }
    return json.dumps({"version": "3.8", "services": services})  # JSON is YAML


def test_compose_gpu_reservations(docker_client, busybox_image, dockerd, tmp_path):
    compose = compose_binary()
    (tmp_path / "docker-compose.yml").write_text(_compose_file(busybox_image))
    project = f"compat{uuid.uuid4().hex[:8]}"
    argv = [compose, "--project-name", project, "--project-directory", str(tmp_path)]
    env = {"DOCKER_HOST": dockerd.url}
    up = run_as("root", [*argv, "up", "--detach"], env=env, cwd=tmp_path)
    try:
        assert up.returncode == 0, up.stderr
        made = docker_client.containers.list(
            filters={"label": f"com.docker.compose.project={project}"}
        )
        by_service = {c.labels["com.docker.compose.service"]: c.id for c in made}
        assert _device_request(docker_client, by_service["all"])["Count"] == -1
        assert _device_request(docker_client, by_service["ids"])["DeviceIDs"] == ["0:0", "0:1"]
    finally:
        run_as("root", [*argv, "down", "--timeout", "1"], env=env, cwd=tmp_path)


def test_devcontainer_up_with_gpu_run_args(docker_client, dockerd, tmp_path):
    devcontainer = devcontainer_binary()
    image = ensure_devcontainer_image(docker_client)
    config = {"image": image, "runArgs": ["--gpus", "all", "--network", "none"]}
    (tmp_path / ".devcontainer").mkdir()
    (tmp_path / ".devcontainer" / "devcontainer.json").write_text(json.dumps(config))
    up = run_as(
        "root",
        [devcontainer, "up", "--workspace-folder", str(tmp_path), "--docker-path", CLIS[0][1]],
        env={"DOCKER_HOST": dockerd.url},
        timeout=120,
    )
    outcome = json.loads(up.stdout.strip().splitlines()[-1]) if up.stdout.strip() else {}
    try:
        assert outcome.get("outcome") == "success", up.stdout[-2000:] + up.stderr[-2000:]
        attrs = docker_client.api.inspect_container(outcome["containerId"])
        assert attrs["Config"]["Labels"]["devcontainer.local_folder"] == str(tmp_path)
        assert _device_request(docker_client, outcome["containerId"])["Count"] == -1
    finally:
        if "containerId" in outcome:
            remove_named(docker_client, outcome["containerId"])


@pytest.mark.parametrize(("label", "cli", "buildkit"), BUILDS)
def test_docker_cli_build(docker_client, busybox_image, dockerd, tmp_path, label, cli, buildkit):
    require_docker_cli(cli)
    (tmp_path / "Dockerfile").write_text(
        f"FROM {busybox_image}\nRUN echo built > /tmp/marker\nCOPY hello.txt /hello.txt\n"
    )
    (tmp_path / "hello.txt").write_text("hello\n")
    tag = f"ds01/compat-build:{uuid.uuid4().hex[:8]}"
    built = run_as(
        "root",
        [cli, "build", "--network", "none", "--tag", tag, str(tmp_path)],
        env={"DOCKER_HOST": dockerd.url, "DOCKER_BUILDKIT": buildkit},
    )
    try:
        assert built.returncode == 0, built.stderr
        shown = built.stdout + built.stderr
        assert ("load build definition" in shown) == (buildkit == "1"), shown
        out = docker_client.containers.run(
            tag, ["cat", "/tmp/marker", "/hello.txt"], network_mode="none", remove=True
        )
        assert out == b"built\nhello\n"
    finally:
        docker_client.api.remove_image(tag, force=True)
