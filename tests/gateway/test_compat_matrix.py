"""The compatibility matrix, GPU requests: every client's way of asking, through the gateway.

Real clients — docker CLI 20.10 and a newer one where installed, docker-compose 1.29, the Dev
Containers CLI, the Python SDK — run by unprivileged users against DOCKER_HOST=unix://<the
gateway socket>. Checked on dockerd's side: each GPU container names exactly its allocated
devices, carries the caller as owner and the client as type, and is bound in the allocator.
Streams, terminals, files and images: test_compat_streams.py; baseline: test_clients_dockerd.py.
"""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path

import pytest

from ds01.containers import LABEL_ALLOCATION, LABEL_USER
from tests.gateway.clients import (
    call_as,
    compose_binary,
    devcontainer_binary,
    require_docker_cli,
    run_as,
    start_as,
    write_as_owner,
)
from tests.gateway.clients import unprivileged_users as _users_fixture
from tests.gateway.clients import user_workdir as _workdir_fixture
from tests.gateway.compat import (
    CLI_IDS,
    CLIS,
    Matrix,
    assert_gpu_container,
    compose_text,
    docker_as,
    every_gpu_taken,
    ok,
    waiting_in_queue,
)
from tests.gateway.compat import matrix as _matrix_fixture
from tests.gateway.compat import remove_users_containers as _cleanup_fixture
from tests.harness.containers import remove_container
from tests.harness.waiting import eventually

pytestmark = pytest.mark.integration
unprivileged_users = _users_fixture  # fixtures, used by name
user_workdir = _workdir_fixture
matrix = _matrix_fixture
remove_users_containers = _cleanup_fixture  # autouse

GPU_FORMS = [("all", 1), ("2", 2), ('"device=0:0,0:1"', 2)]
GPU_FORM_IDS = ["all", "count-2", "device-ids"]


# --- GPU requests, each client ------------------------------------------------------------


@pytest.mark.parametrize(("form", "count"), GPU_FORMS, ids=GPU_FORM_IDS)
@pytest.mark.parametrize(("label", "cli"), CLIS, ids=CLI_IDS)
def test_docker_run_gpus(matrix: Matrix, label, cli, form, count):
    require_docker_cli(cli)
    name = f"compat-{uuid.uuid4().hex[:8]}"
    ok(
        docker_as(
            matrix,
            matrix.alice,
            cli,
            "run",
            "--detach",
            "--name",
            name,
            "--network",
            "none",
            "--gpus",
            form,
            matrix.image,
            "sleep",
            "3600",
        )
    )
    assert_gpu_container(matrix, name, user=matrix.alice, ctype="docker", count=count)


@pytest.mark.parametrize(("label", "cli"), CLIS, ids=CLI_IDS)
def test_docker_create_then_start_gpus(matrix: Matrix, label, cli):
    require_docker_cli(cli)
    name = f"compat-{uuid.uuid4().hex[:8]}"
    args = ["create", "--name", name, "--network", "none", "--gpus", "1", matrix.image]
    ok(docker_as(matrix, matrix.bob, cli, *args, "sleep", "3600"))
    ok(docker_as(matrix, matrix.bob, cli, "start", name))
    assert_gpu_container(matrix, name, user=matrix.bob, ctype="docker", count=1)


@pytest.mark.parametrize(("label", "cli"), CLIS, ids=CLI_IDS)
def test_docker_run_nvidia_runtime_visible_devices(matrix: Matrix, label, cli):
    """The older form (--runtime nvidia -e NVIDIA_VISIBLE_DEVICES=…) is rewritten too."""
    require_docker_cli(cli)
    name = f"compat-{uuid.uuid4().hex[:8]}"
    args = ["run", "--detach", "--name", name, "--network", "none", "--runtime", "nvidia"]
    args += ["--env", "NVIDIA_VISIBLE_DEVICES=0:0", matrix.image, "sleep", "3600"]
    ok(docker_as(matrix, matrix.alice, cli, *args))
    assert_gpu_container(matrix, name, user=matrix.alice, ctype="docker", count=1, runtime=True)


@pytest.mark.parametrize(
    ("gpu", "count"),
    [
        ({"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}, 1),
        ({"driver": "nvidia", "count": 2, "capabilities": ["gpu"]}, 2),
        ({"driver": "nvidia", "device_ids": ["0:0", "0:1"], "capabilities": ["gpu"]}, 2),
        ({"runtime": "nvidia", "environment": ["NVIDIA_VISIBLE_DEVICES=all"]}, 1),
    ],
    ids=["count-all", "count-2", "device-ids", "runtime-nvidia"],
)
def test_compose_gpu_reservations(matrix: Matrix, user_workdir, gpu, count):
    compose = compose_binary()
    folder = user_workdir(matrix.alice)
    write_as_owner(matrix.alice, folder / "docker-compose.yml", compose_text(matrix.image, gpu))
    project = f"compat{uuid.uuid4().hex[:8]}"
    argv = [compose, "--project-name", project]
    env = {"DOCKER_HOST": matrix.docker_host}
    ok(run_as(matrix.alice, [*argv, "up", "--detach"], env=env, cwd=folder))
    made = matrix.docker.containers.list(filters={"label": f"com.docker.compose.project={project}"})
    assert len(made) == 1
    runtime = "runtime" in gpu
    assert_gpu_container(
        matrix, made[0].id, user=matrix.alice, ctype="compose", count=count, runtime=runtime
    )
    allocation = made[0].labels[LABEL_ALLOCATION]
    ok(run_as(matrix.alice, [*argv, "down", "--timeout", "1"], env=env, cwd=folder))
    assert not matrix.docker.containers.list(
        all=True, filters={"label": f"com.docker.compose.project={project}"}
    )
    eventually(  # `down` gives the GPU back (held for the hold period, then released)
        lambda: matrix.allocator.get(allocation)["state"] in ("held", "released"),
        30,
        f"allocation {allocation} let go after compose down",
    )


def test_compose_run_one_off_containers(matrix: Matrix, user_workdir):
    """`compose run`: a one-off container (attached with -T, or detached) asks for the GPU too."""
    folder = user_workdir(matrix.alice)
    gpu = {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
    write_as_owner(matrix.alice, folder / "docker-compose.yml", compose_text(matrix.image, gpu))
    argv = [compose_binary(), "--project-name", f"oneoff{uuid.uuid4().hex[:8]}", "run"]
    env = {"DOCKER_HOST": matrix.docker_host}
    said = run_as(
        matrix.alice, [*argv, "-T", "--rm", "gpu", "echo", "one-off"], env=env, cwd=folder
    )
    assert ok(said).strip() == "one-off"
    name = ok(run_as(matrix.alice, [*argv, "-d", "gpu"], env=env, cwd=folder)).strip()
    made = matrix.docker.containers.get(name)
    assert made.labels["com.docker.compose.oneoff"] == "True"
    assert_gpu_container(matrix, made.id, user=matrix.alice, ctype="compose", count=1)


def test_same_compose_project_name_for_two_users_leaves_the_first_alone(
    matrix: Matrix, user_workdir
):
    """compose names a project after its folder, so two users' `app` folders collide; bob's
    compose sees alice's containers (listing shows everyone) and may not touch them."""
    compose = compose_binary()
    text = json.dumps(
        {
            "version": "3.8",
            "services": {
                "web": {"image": matrix.image, "command": ["sleep", "3600"], "network_mode": "none"}
            },
        }
    )
    env = {"DOCKER_HOST": matrix.docker_host}
    project = f"app{uuid.uuid4().hex[:6]}"
    folders = {}
    for user in (matrix.alice, matrix.bob):
        folders[user.name] = user_workdir(user) / project
        write_as_owner(user, folders[user.name] / "docker-compose.yml", text)
    ok(run_as(matrix.alice, [compose, "up", "--detach"], env=env, cwd=folders[matrix.alice.name]))
    label = {"label": f"com.docker.compose.project={project}"}
    (alices,) = matrix.docker.containers.list(all=True, filters=label)
    bobs = run_as(matrix.bob, [compose, "up", "--detach"], env=env, cwd=folders[matrix.bob.name])
    assert bobs.returncode != 0  # names are one namespace: told whose, and what to do
    assert "taken by another user" in bobs.stderr and "COMPOSE_PROJECT_NAME" in bobs.stderr, (
        bobs.stderr
    )
    after = matrix.docker.containers.get(alices.id)
    assert after.labels[LABEL_USER] == matrix.alice.name and after.status == "running"
    assert after.attrs["State"]["StartedAt"] == alices.attrs["State"]["StartedAt"]


@pytest.mark.parametrize(("label", "cli"), CLIS, ids=CLI_IDS)
def test_devcontainer_up_and_exec_with_gpus(matrix: Matrix, user_workdir, label, cli):
    require_docker_cli(cli)
    devcontainer = devcontainer_binary()
    folder = user_workdir(matrix.alice)
    config = {"image": matrix.dev_image, "runArgs": ["--gpus", "all", "--network", "none"]}
    write_as_owner(matrix.alice, folder / ".devcontainer/devcontainer.json", json.dumps(config))
    common = ["--workspace-folder", str(folder), "--docker-path", cli]
    env = {"DOCKER_HOST": matrix.docker_host}
    up = run_as(matrix.alice, [devcontainer, "up", *common], env=env, timeout=120)
    lines = up.stdout.strip().splitlines()
    outcome = json.loads(lines[-1]) if lines else {}
    assert outcome.get("outcome") == "success", up.stdout[-3000:] + up.stderr[-3000:]
    container = outcome["containerId"]
    assert_gpu_container(matrix, container, user=matrix.alice, ctype="devcontainer", count=1)
    said = run_as(
        matrix.alice, [devcontainer, "exec", *common, "sh", "-c", "echo in-$((6*7))"], env=env
    )
    assert "in-42" in ok(said)


def _devcontainer_up(matrix: Matrix, folder: Path, cli: str) -> dict:
    argv = [devcontainer_binary(), "up", "--workspace-folder", str(folder), "--docker-path", cli]
    up = run_as(matrix.alice, argv, env={"DOCKER_HOST": matrix.docker_host}, timeout=180)
    lines = up.stdout.strip().splitlines()
    outcome = json.loads(lines[-1]) if lines else {}
    assert outcome.get("outcome") == "success", up.stdout[-3000:] + up.stderr[-3000:]
    return outcome


@pytest.mark.parametrize(("label", "cli"), CLIS, ids=CLI_IDS)
def test_devcontainer_built_from_a_dockerfile(matrix: Matrix, user_workdir, label, cli):
    """`build` in devcontainer.json: the CLI runs `docker build` through the gateway first."""
    require_docker_cli(cli)
    folder = user_workdir(matrix.alice)
    dockerfile = f"FROM {matrix.dev_image}\nRUN echo built > /built\n"
    write_as_owner(matrix.alice, folder / ".devcontainer/Dockerfile", dockerfile)
    config = {
        "build": {"dockerfile": "Dockerfile"},
        "runArgs": ["--gpus", "1", "--network", "none"],
    }
    write_as_owner(matrix.alice, folder / ".devcontainer/devcontainer.json", json.dumps(config))
    container = matrix.docker.containers.get(_devcontainer_up(matrix, folder, cli)["containerId"])
    try:
        assert_gpu_container(matrix, container.id, user=matrix.alice, ctype="devcontainer", count=1)
        assert container.exec_run(["cat", "/built"]).output == b"built\n"
    finally:
        remove_container(container)
        matrix.docker.images.remove(container.image.id, force=True)


def test_devcontainer_from_compose(matrix: Matrix, user_workdir):
    """`dockerComposeFile`: the Dev Containers CLI drives docker-compose 1.29; its labels make
    the container a devcontainer, not a compose one."""
    compose_binary()
    folder = user_workdir(matrix.alice)
    gpu = {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
    service = json.loads(compose_text(matrix.dev_image, gpu))
    service["services"]["gpu"]["volumes"] = [f"..:/workspaces/{folder.name}"]
    write_as_owner(matrix.alice, folder / ".devcontainer/docker-compose.yml", json.dumps(service))
    config = {
        "dockerComposeFile": "docker-compose.yml",
        "service": "gpu",
        "workspaceFolder": f"/workspaces/{folder.name}",
    }
    write_as_owner(matrix.alice, folder / ".devcontainer/devcontainer.json", json.dumps(config))
    outcome = _devcontainer_up(matrix, folder, CLIS[0][1])
    container = outcome["containerId"]
    assert_gpu_container(matrix, container, user=matrix.alice, ctype="devcontainer", count=1)
    labels = matrix.docker.containers.get(container).labels
    assert labels["com.docker.compose.project"] == outcome["composeProjectName"]


def _sdk_run_with_gpu(docker_host: str, image: str, name: str) -> str:
    """In the child that became the user: what a Python program on the server would do."""
    import docker
    from docker.types import DeviceRequest

    client = docker.DockerClient(base_url=docker_host, timeout=60)
    container = client.containers.run(
        image,
        ["sleep", "3600"],
        name=name,
        network_mode="none",
        detach=True,
        device_requests=[DeviceRequest(count=1, capabilities=[["gpu"]])],
    )
    return container.id


def test_python_sdk_gpu(matrix: Matrix):
    name = f"compat-{uuid.uuid4().hex[:8]}"
    made = call_as(matrix.alice, _sdk_run_with_gpu, matrix.docker_host, matrix.image, name)
    assert_gpu_container(matrix, made, user=matrix.alice, ctype="docker", count=1)


def _sdk_run_expecting_refusal(docker_host: str, image: str, count: int) -> str:
    import docker
    from docker.types import DeviceRequest

    client = docker.DockerClient(base_url=docker_host, timeout=60)
    try:
        client.containers.create(
            image,
            ["true"],
            network_mode="none",
            device_requests=[DeviceRequest(count=count, capabilities=[["gpu"]])],
        )
    except docker.errors.APIError as exc:
        return f"{exc.status_code} {exc.explanation}"
    return "created"


def _over_quota_attempt(matrix: Matrix, client: str, folder: Path, count: int) -> str:
    """What the user sees when asking for more GPUs than the quota with `client`."""
    env = {"DOCKER_HOST": matrix.docker_host}
    gpus = ["--gpus", str(count), "--network", "none"]
    if client == "compose":
        gpu = {"driver": "nvidia", "count": count, "capabilities": ["gpu"]}
        write_as_owner(matrix.alice, folder / "docker-compose.yml", compose_text(matrix.image, gpu))
        argv = [compose_binary(), "--project-name", f"quota{uuid.uuid4().hex[:8]}"]
        done = run_as(matrix.alice, [*argv, "up", "--detach"], env=env, cwd=folder)
    elif client == "devcontainer":
        config = {"image": matrix.dev_image, "runArgs": gpus}
        write_as_owner(matrix.alice, folder / ".devcontainer/devcontainer.json", json.dumps(config))
        argv = [devcontainer_binary(), "up", "--workspace-folder", str(folder)]
        done = run_as(matrix.alice, argv, env=env, timeout=120)
    elif client == "python-sdk":
        return call_as(
            matrix.alice, _sdk_run_expecting_refusal, matrix.docker_host, matrix.image, count
        )
    else:
        cli = require_docker_cli(dict(CLIS)[client])
        done = docker_as(matrix, matrix.alice, cli, "run", "--rm", *gpus, matrix.image, "true")
    assert done.returncode != 0, done.stdout
    return done.stdout + done.stderr


@pytest.mark.parametrize("client", [*CLI_IDS, "compose", "devcontainer", "python-sdk"])
def test_over_quota_the_allocators_message_reaches_the_user(matrix: Matrix, user_workdir, client):
    """Bad input gets a clear error through every client, and leaves nothing behind."""
    limit = matrix.quota
    assert isinstance(limit, int), "the stack's users need a GPU quota (max_gpus)"
    before = {a["id"] for a in matrix.allocator.allocations(everyone=True)}
    seen = _over_quota_attempt(matrix, client, user_workdir(matrix.alice), limit + 1)
    assert "GPU quota exceeded" in seen and f"asks for {limit + 1}" in seen, seen
    after = {a["id"] for a in matrix.allocator.allocations(everyone=True)}
    assert after == before
    assert not matrix.docker.containers.list(
        all=True, filters={"label": f"{LABEL_USER}={matrix.alice.name}"}
    )


def _queued_client(matrix: Matrix, client: str, folder: Path, env: dict[str, str]):
    """Start `client` asking for one GPU; it blocks in the queue. Returns the process."""
    if client == "compose":
        gpu = {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
        write_as_owner(matrix.alice, folder / "docker-compose.yml", compose_text(matrix.image, gpu))
        argv = [compose_binary(), "--project-name", f"queue{uuid.uuid4().hex[:8]}", "up", "-d"]
        return start_as(matrix.alice, argv, env=env, cwd=folder)
    cli = require_docker_cli(dict(CLIS)[client])
    argv = [
        cli,
        "run",
        "--detach",
        "--network",
        "none",
        "--gpus",
        "1",
        matrix.image,
        "sleep",
        "600",
    ]
    return start_as(matrix.alice, argv, env=env)


@pytest.mark.parametrize("client", [*CLI_IDS, "compose"])
def test_waiting_in_the_queue_inside_the_call(matrix: Matrix, user_workdir, client):
    """No free GPU: the create waits in the FIFO queue and succeeds when one frees."""
    env = {"DOCKER_HOST": matrix.docker_host}
    with every_gpu_taken(matrix):
        waiting = _queued_client(matrix, client, user_workdir(matrix.alice), env)
        try:
            eventually(lambda: waiting_in_queue(matrix, matrix.alice), 30, "ds01alice in the queue")
        except AssertionError:
            waiting.kill()
            raise
    _, err = waiting.communicate(timeout=60)
    assert waiting.returncode == 0, err
    made = matrix.docker.containers.list(filters={"label": f"{LABEL_USER}={matrix.alice.name}"})
    assert len(made) == 1
    ctype = "compose" if client == "compose" else "docker"
    assert_gpu_container(matrix, made[0].id, user=matrix.alice, ctype=ctype, count=1)


def test_a_client_that_gives_up_leaves_no_ticket_behind(matrix: Matrix, user_workdir, caplog):
    """compose's HTTP timeout (COMPOSE_HTTP_TIMEOUT, 60 s by default) can end a wait before
    gpu_wait does: the gateway must cancel the ticket (not let it time out), so nothing is
    granted or created later."""
    caplog.set_level(logging.INFO, logger="allocator")
    env = {"DOCKER_HOST": matrix.docker_host, "COMPOSE_HTTP_TIMEOUT": "2"}

    def cancelled() -> bool:
        return any(
            "left while waiting for a GPU" in r.getMessage() and matrix.alice.name in r.getMessage()
            for r in caplog.records
        )

    with every_gpu_taken(matrix):
        gave_up = _queued_client(matrix, "compose", user_workdir(matrix.alice), env)
        _, err = gave_up.communicate(timeout=60)
        assert gave_up.returncode != 0 and "Read timed out" in err, err
        eventually(cancelled, 30, "the gateway to cancel ds01alice's ticket")
        assert not waiting_in_queue(matrix, matrix.alice)
    assert matrix.service.usage(matrix.alice.name)["allocations"] == []
    assert not matrix.docker.containers.list(
        all=True, filters={"label": f"{LABEL_USER}={matrix.alice.name}"}
    )
