"""The compatibility matrix: real clients, run by unprivileged users, through the gateway.

Each case is what a user of the shared server really types — docker CLI 20.10 and newer,
docker-compose 1.29, the Dev Containers CLI, the Python SDK — against DOCKER_HOST=unix://<the
gateway socket>, checked on dockerd's side: GPU containers name exactly the allocated devices,
carry the caller as owner and the client type, and are bound in the allocator.
test_clients_dockerd.py runs the same clients against plain dockerd, as a baseline.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from allocator.model import LIVE_STATES
from ds01.containers import LABEL_ALLOCATION, LABEL_DEVICES, LABEL_TYPE, LABEL_USER
from tests.gateway.clients import (
    CompatUser,
    TerminalSession,
    call_as,
    cli_supports_buildkit,
    compose_binary,
    devcontainer_binary,
    docker_clis,
    ensure_devcontainer_image,
    require_docker_cli,
    run_as,
    run_in_pty_as,
    start_as,
    write_as_owner,
)
from tests.gateway.clients import unprivileged_users as _users_fixture
from tests.gateway.clients import user_workdir as _workdir_fixture
from tests.harness.waiting import eventually

pytestmark = pytest.mark.integration
unprivileged_users = _users_fixture  # session fixtures, used by name
user_workdir = _workdir_fixture

CLIS = docker_clis()
CLI_IDS = [label for label, _ in CLIS]
GPU_FORMS = [("all", 1), ("2", 2), ('"device=0:0,0:1"', 2)]
GPU_FORM_IDS = ["all", "count-2", "device-ids"]


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
            container.remove(force=True)
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


def _compose_text(image: str, gpu: dict) -> str:
    """One service asking for GPUs as `gpu` says (a deploy device, or runtime + environment)."""
    service = {"image": image, "command": ["sleep", "3600"], "network_mode": "none"}
    if "runtime" in gpu:  # the 2.x file format's form
        return json.dumps({"version": "2.4", "services": {"gpu": {**service, **gpu}}})
    service["deploy"] = {"resources": {"reservations": {"devices": [gpu]}}}
    return json.dumps({"version": "3.8", "services": {"gpu": service}})  # JSON is YAML


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
    write_as_owner(matrix.alice, folder / "docker-compose.yml", _compose_text(matrix.image, gpu))
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
    ok(run_as(matrix.alice, [*argv, "down", "--timeout", "1"], env=env, cwd=folder))
    assert not matrix.docker.containers.list(
        all=True, filters={"label": f"com.docker.compose.project={project}"}
    )


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
    if bobs.returncode:  # today: refused on alice's container
        assert "is not yours" in bobs.stderr or "already in use" in bobs.stderr, bobs.stderr
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
        container.remove(force=True)
        matrix.docker.images.remove(container.image.id, force=True)


def test_devcontainer_from_compose(matrix: Matrix, user_workdir):
    """`dockerComposeFile`: the Dev Containers CLI drives docker-compose 1.29; its labels make
    the container a devcontainer, not a compose one."""
    compose_binary()
    folder = user_workdir(matrix.alice)
    gpu = {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
    service = json.loads(_compose_text(matrix.dev_image, gpu))
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
        write_as_owner(
            matrix.alice, folder / "docker-compose.yml", _compose_text(matrix.image, gpu)
        )
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


def _sdk_everyday(docker_host: str, image: str) -> dict[str, Any]:
    """In the child that became the user: run, exec, logs stream, archives, attach socket."""
    import io
    import socket
    import tarfile

    import docker

    client = docker.DockerClient(base_url=docker_host, timeout=60)
    seen: dict[str, Any] = {}
    seen["run"] = client.containers.run(image, ["echo", "ran"], network_mode="none", remove=True)
    box = client.containers.run(
        image,
        ["sh", "-c", "echo one; while [ ! -e /tmp/go ]; do sleep 0.1; done; echo two"],
        network_mode="none",
        detach=True,
    )
    stream = box.logs(stream=True, follow=True)
    seen["first"] = next(stream)
    seen["exec"] = box.exec_run(["sh", "-c", "echo exec; touch /tmp/go"]).output
    seen["rest"] = b"".join(stream)
    payload = io.BytesIO()
    with tarfile.open(fileobj=payload, mode="w") as tar:
        info = tarfile.TarInfo("note.txt")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"note\n"))
    seen["put"] = box.put_archive("/tmp", payload.getvalue())
    chunks, _ = box.get_archive("/tmp/note.txt")
    with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as tar:
        seen["got"] = tar.extractfile("note.txt").read()
    seen["exit"] = box.wait()["StatusCode"]
    box.remove()
    echo = client.containers.create(image, ["cat"], network_mode="none", stdin_open=True)
    sock = echo.attach_socket(params={"stdin": 1, "stdout": 1, "stream": 1})
    echo.start()
    sock._sock.sendall(b"via attach\n")
    sock._sock.shutdown(socket.SHUT_WR)  # the half-close that ends cat's stdin
    data = b""
    while chunk := sock._sock.recv(4096):
        data += chunk
    seen["attach"] = data
    seen["attach_exit"] = echo.wait()["StatusCode"]
    echo.remove()
    return seen


def test_python_sdk_everyday(matrix: Matrix):
    seen = call_as(matrix.alice, _sdk_everyday, matrix.docker_host, matrix.dev_image)
    assert seen["run"] == b"ran\n"
    assert seen["first"] == b"one\n"  # arrived while the container waited for /tmp/go
    assert seen["exec"] == b"exec\n" and seen["rest"] == b"two\n" and seen["exit"] == 0
    assert seen["put"] is True and seen["got"] == b"note\n"
    assert seen["attach"].endswith(b"via attach\n") and seen["attach_exit"] == 0


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
        blocker.remove(force=True)


def _waiting(matrix: Matrix, user: CompatUser) -> bool:
    return matrix.service.usage(user.name)["waiting"] > 0


def _queued_client(matrix: Matrix, client: str, folder: Path, env: dict[str, str]):
    """Start `client` asking for one GPU; it blocks in the queue. Returns the process."""
    if client == "compose":
        gpu = {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
        write_as_owner(
            matrix.alice, folder / "docker-compose.yml", _compose_text(matrix.image, gpu)
        )
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
            eventually(lambda: _waiting(matrix, matrix.alice), 30, "ds01alice in the queue")
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
        assert not _waiting(matrix, matrix.alice)
    assert matrix.service.usage(matrix.alice.name)["allocations"] == []
    assert not matrix.docker.containers.list(
        all=True, filters={"label": f"{LABEL_USER}={matrix.alice.name}"}
    )


# --- streams and hijacked connections -------------------------------------------------------


def _running(matrix: Matrix, user: CompatUser, cli: str, *command: str) -> str:
    """A container of `user` made through the gateway (no GPU), running `command`."""
    name = f"compat-{uuid.uuid4().hex[:8]}"
    args = ["run", "--detach", "--name", name, "--network", "none", matrix.dev_image]
    ok(docker_as(matrix, user, cli, *args, *(command or ("sleep", "3600"))))
    return name


@pytest.mark.parametrize(("label", "cli"), CLIS, ids=CLI_IDS)
def test_run_it_on_a_terminal(matrix: Matrix, label, cli):
    require_docker_cli(cli)
    done = run_in_pty_as(
        matrix.alice,
        [cli, "run", "-it", "--rm", "--network", "none", matrix.dev_image, "sh"],
        keystrokes="echo tty-$((6*7)); tty; exit 3\n",
        env={"DOCKER_HOST": matrix.docker_host},
    )
    assert done.returncode == 3, done.stdout + done.stderr
    assert "tty-42" in done.stdout and "/dev/pts/" in done.stdout


@pytest.mark.parametrize(("label", "cli"), CLIS, ids=CLI_IDS)
def test_exec_it_on_a_terminal(matrix: Matrix, label, cli):
    require_docker_cli(cli)
    name = _running(matrix, matrix.alice, cli)
    done = run_in_pty_as(
        matrix.alice,
        [cli, "exec", "-it", name, "sh"],
        keystrokes="echo exec-$((6*7)); tty; exit 4\n",
        env={"DOCKER_HOST": matrix.docker_host},
    )
    assert done.returncode == 4, done.stdout + done.stderr
    assert "exec-42" in done.stdout and "/dev/pts/" in done.stdout


@pytest.mark.parametrize(("label", "cli"), CLIS, ids=CLI_IDS)
def test_detach_keys_resize_and_attach_again(matrix: Matrix, label, cli):
    """Ctrl-P Ctrl-Q leaves the container running (dockerd reads the keys, so they must pass
    through); the terminal size arrives by a resize call; `attach` picks the shell up again."""
    require_docker_cli(cli)
    name = f"compat-{uuid.uuid4().hex[:8]}"
    env = {"DOCKER_HOST": matrix.docker_host}
    argv = [cli, "run", "-it", "--name", name, "--network", "none", matrix.dev_image, "sh"]
    first = TerminalSession(matrix.alice, argv, env=env, rows=33, cols=111)
    try:
        first.expect("# ")
        first.send("stty size\n")
        first.expect("33 111")
        first.send(b"\x10\x11")
        assert first.wait() == 0, first.seen
    finally:
        first.close()
    assert matrix.docker.containers.get(name).status == "running"
    again = TerminalSession(matrix.alice, [cli, "attach", name], env=env)
    try:
        again.send("echo back-$((6*7))\n")
        again.expect("back-42")
        again.send("exit 5\n")
        assert again.wait() == 5, again.seen
    finally:
        again.close()
    assert matrix.docker.containers.get(name).attrs["State"]["ExitCode"] == 5


@pytest.mark.parametrize(("label", "cli"), CLIS, ids=CLI_IDS)
def test_exec_i_stdin_ends_by_half_close(matrix: Matrix, label, cli):
    require_docker_cli(cli)
    name = _running(matrix, matrix.alice, cli)
    done = docker_as(matrix, matrix.alice, cli, "exec", "-i", name, "cat", input="hi\nthere\n")
    assert ok(done) == "hi\nthere\n"


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
        return self.lines.get(timeout=timeout)

    def stop(self) -> str:
        self.process.terminate()
        self.process.wait(timeout=30)
        return self.process.stderr.read()


@pytest.mark.parametrize(("label", "cli"), CLIS, ids=CLI_IDS)
def test_logs_follow_streams_before_exit(matrix: Matrix, label, cli):
    require_docker_cli(cli)
    script = "echo first; while [ ! -e /tmp/go ]; do sleep 0.1; done; echo second"
    name = _running(matrix, matrix.alice, cli, "sh", "-c", script)
    env = {"DOCKER_HOST": matrix.docker_host}
    reader = LineReader(start_as(matrix.alice, [cli, "logs", "--follow", name], env=env))
    try:
        assert reader.next() == "first"
        assert matrix.docker.containers.get(name).status == "running"  # streamed, not at exit
        matrix.docker.containers.get(name).exec_run(["touch", "/tmp/go"])
        assert reader.next() == "second"
        assert reader.next() is None  # the stream ends with the container
        assert reader.process.wait(timeout=30) == 0
    finally:
        if reader.process.poll() is None:
            reader.stop()


@pytest.mark.parametrize(("label", "cli"), CLIS, ids=CLI_IDS)
def test_events_stream(matrix: Matrix, label, cli):
    """The first start may come as history (--since: no race with subscribing); the restart's
    start can only arrive through the open stream."""
    require_docker_cli(cli)
    name = f"compat-{uuid.uuid4().hex[:8]}"
    since = str(int(time.time()) - 1)
    argv = [cli, "events", "--since", since, "--filter", f"container={name}"]
    argv += ["--filter", "event=start", "--format", "{{.Action}} {{.Actor.Attributes.name}}"]
    reader = LineReader(start_as(matrix.alice, argv, env={"DOCKER_HOST": matrix.docker_host}))
    try:
        args = ["run", "--detach", "--name", name, "--network", "none", matrix.image]
        ok(docker_as(matrix, matrix.alice, cli, *args, "sleep", "3600"))
        assert reader.next() == f"start {name}"
        ok(docker_as(matrix, matrix.alice, cli, "restart", "--time", "0", name))
        assert reader.next() == f"start {name}"
        assert reader.process.poll() is None  # still streaming
    finally:
        reader.stop()


@pytest.mark.parametrize(("label", "cli"), CLIS, ids=CLI_IDS)
def test_run_in_the_foreground_with_piped_stdin(matrix: Matrix, label, cli):
    """run without -d attaches (hijack) before start; -i's stdin ends with a half-close."""
    require_docker_cli(cli)
    base = ["run", "--rm", "--network", "none"]
    said = docker_as(matrix, matrix.alice, cli, *base, matrix.image, "echo", "hello")
    assert ok(said) == "hello\n"
    piped = docker_as(matrix, matrix.alice, cli, *base, "-i", matrix.image, "cat", input="a\nb\n")
    assert ok(piped) == "a\nb\n"


@pytest.mark.parametrize(("label", "cli"), CLIS, ids=CLI_IDS)
def test_container_verbs_on_ones_own_container(matrix: Matrix, user_workdir, label, cli):
    """The everyday verbs, each on an owned container through the gateway's ownership check."""
    require_docker_cli(cli)
    name = _running(matrix, matrix.alice, cli)

    def cli_ok(*args: str) -> str:
        return ok(docker_as(matrix, matrix.alice, cli, *args))

    assert cli_ok("ps", "--filter", f"name={name}", "--format", "{{.Names}}") == f"{name}\n"
    assert cli_ok("inspect", "--format", "{{.Name}}", name) == f"/{name}\n"
    assert "sleep" in cli_ok("top", name)
    assert name in cli_ok("stats", "--no-stream", "--format", "{{.Name}}", name)
    cli_ok("pause", name)
    assert matrix.docker.containers.get(name).status == "paused"
    cli_ok("unpause", name)
    renamed = f"{name}-renamed"
    cli_ok("rename", name, renamed)
    cli_ok("exec", renamed, "touch", "/tmp/changed")
    assert "/tmp/changed" in cli_ok("diff", renamed)
    tag = f"ds01/compat-commit:{uuid.uuid4().hex[:8]}"
    cli_ok("commit", renamed, tag)
    try:
        assert matrix.docker.images.get(tag).attrs["Size"] > 0
    finally:
        matrix.docker.images.remove(tag)
    exported = user_workdir(matrix.alice) / "export.tar"
    cli_ok("export", "--output", str(exported), renamed)
    assert exported.stat().st_size > 0
    cli_ok("kill", renamed)
    assert cli_ok("wait", renamed).strip() == "137"
    cli_ok("start", renamed)
    cli_ok("stop", "--time", "0", renamed)
    cli_ok("rm", renamed)
    assert not matrix.docker.containers.list(all=True, filters={"name": renamed})


@pytest.mark.parametrize(("label", "cli"), CLIS, ids=CLI_IDS)
def test_named_volume_round_trip(matrix: Matrix, label, cli):
    require_docker_cli(cli)
    volume = f"compat-{uuid.uuid4().hex[:8]}"
    base = ["run", "--rm", "--network", "none", "--volume", f"{volume}:/data", matrix.image]
    try:
        ok(docker_as(matrix, matrix.alice, cli, "volume", "create", volume))
        assert matrix.docker.volumes.get(volume).attrs["Labels"][LABEL_USER] == matrix.alice.name
        ok(docker_as(matrix, matrix.alice, cli, *base, "sh", "-c", "echo kept > /data/f"))
        assert ok(docker_as(matrix, matrix.alice, cli, *base, "cat", "/data/f")) == "kept\n"
        ok(docker_as(matrix, matrix.alice, cli, "volume", "rm", volume))
    finally:
        if matrix.docker.volumes.list(filters={"name": volume}):
            matrix.docker.volumes.get(volume).remove(force=True)


# --- files and images -------------------------------------------------------------------------


@pytest.mark.parametrize(("label", "cli"), CLIS, ids=CLI_IDS)
def test_cp_both_ways(matrix: Matrix, user_workdir, label, cli):
    """A few MiB of binary: the upload spans many reads, the archive comes back byte-exact."""
    require_docker_cli(cli)
    folder = user_workdir(matrix.alice)
    sent = write_as_owner(matrix.alice, folder / "in.bin", os.urandom(3 * 1024 * 1024 + 7))
    name = _running(matrix, matrix.alice, cli)
    ok(docker_as(matrix, matrix.alice, cli, "cp", str(sent), f"{name}:/tmp/in.bin"))
    back = folder / "back.bin"
    ok(docker_as(matrix, matrix.alice, cli, "cp", f"{name}:/tmp/in.bin", str(back)))
    assert back.read_bytes() == sent.read_bytes()
    assert back.stat().st_uid == matrix.alice.uid


@pytest.mark.parametrize("buildkit", ["0", "1"], ids=["legacy", "buildkit"])
@pytest.mark.parametrize(("label", "cli"), CLIS, ids=CLI_IDS)
def test_build(matrix: Matrix, user_workdir, label, cli, buildkit):
    require_docker_cli(cli)
    if buildkit == "1" and not cli_supports_buildkit(cli):
        pytest.skip(f"{label} needs the buildx plugin for BuildKit, and none is installed")
    folder = user_workdir(matrix.alice)
    write_as_owner(
        matrix.alice,
        folder / "Dockerfile",
        f"FROM {matrix.image}\nRUN echo built > /tmp/marker\nCOPY hello.txt /hello.txt\n",
    )
    write_as_owner(matrix.alice, folder / "hello.txt", "hello\n")
    write_as_owner(matrix.alice, folder / "ballast.bin", os.urandom(2 * 1024 * 1024))
    tag = f"ds01/compat-build:{uuid.uuid4().hex[:8]}"
    built = docker_as(
        matrix,
        matrix.alice,
        cli,
        "build",
        "--network",
        "none",
        "--tag",
        tag,
        str(folder),
        env={"DOCKER_BUILDKIT": buildkit},
        timeout=120,
    )
    try:
        shown = ok(built) + built.stderr
        # BuildKit (its /session upgraded to h2c) and the legacy builder print differently
        assert ("load build definition" in shown) == (buildkit == "1"), shown
        out = matrix.docker.containers.run(
            tag, ["cat", "/tmp/marker", "/hello.txt"], network_mode="none", remove=True
        )
        assert out == b"built\nhello\n"
    finally:
        if matrix.docker.images.list(name=tag):
            matrix.docker.images.remove(tag, force=True)


@pytest.mark.parametrize(("label", "cli"), CLIS, ids=CLI_IDS)
def test_load_a_saved_image(matrix: Matrix, user_workdir, label, cli):
    """Without a registry, `docker save` on one machine and `load` here is how images arrive."""
    require_docker_cli(cli)
    tag = f"ds01/compat-load:{uuid.uuid4().hex[:8]}"
    matrix.docker.images.get(matrix.image).tag(tag)
    folder = user_workdir(matrix.alice)
    tarball = folder / "image.tar"
    with tarball.open("wb") as out:
        for piece in matrix.docker.images.get(tag).save(named=tag):
            out.write(piece)
    tarball.chmod(0o644)
    matrix.docker.images.remove(tag)
    try:
        loaded = ok(docker_as(matrix, matrix.alice, cli, "load", "--input", str(tarball)))
        assert tag in loaded
        assert matrix.docker.images.get(tag).id == matrix.docker.images.get(matrix.image).id
    finally:
        if matrix.docker.images.list(name=tag):
            matrix.docker.images.remove(tag)
