"""`ds01-docker` in front of the gateway: it finds the gateway's socket by itself, keeps its
countdown while waiting for a GPU, and the gateway takes over the reservation it made (one
allocation per container, not two), for root and for an unprivileged user."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from allocator import wrapper
from tests.gateway.clients import (
    DEBIAN_DOCKER,
    call_as,
    require_docker_cli,
    unprivileged_users,  # noqa: F401 - a fixture
    user_env,
)
from tests.harness.waiting import eventually

pytestmark = pytest.mark.integration
WAIT = 30.0  # bounds a hang; never an expectation of speed
BIN = Path(sys.executable).parent


def wrapper_env(stack, base: dict[str, str]) -> dict[str, str]:
    """No DOCKER_HOST: the wrapper must find the gateway through DS01_GATEWAY_SOCKET."""
    env = {k: v for k, v in base.items() if k not in ("DOCKER_HOST", "DOCKER_CONTEXT")}
    env.update(
        DS01_GATEWAY_SOCKET=str(stack.socket_path),
        DS01_ALLOCATOR_SOCKET=str(stack.runtime.socket_path),
        DS01_REAL_DOCKER=DEBIAN_DOCKER,
        DS01_POLICY=str(stack.folder / "ds01.yaml"),
    )
    return env


def run_wrapper_in_child(argv: list[str], env: dict[str, str], err_path: str) -> tuple[int, str]:
    """`ds01-docker argv` in a fresh child of this process (it execs docker): code and stdout;
    its stderr goes to `err_path`, where a test can watch the countdown as it is written.

    Module-level so `call_as` can run it as a user who cannot open the venv's interpreter.
    """
    out_r, out_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: becomes the real docker, or exits with the wrapper's code
        code = 126
        try:
            err = os.open(err_path, os.O_WRONLY | os.O_APPEND)
            os.dup2(out_w, 1)
            os.dup2(err, 2)
            sys.stdout = open(1, "w", closefd=False)  # pytest replaced both streams
            sys.stderr = open(2, "w", closefd=False)
            os.environ.clear()
            os.environ.update(env)
            code = wrapper.main(argv)
        finally:
            os._exit(code)
    os.close(out_w)
    with os.fdopen(out_r, "rb") as stream:
        out = stream.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out


def gpu_run(stack, name: str) -> list[str]:
    return ["run", "-d", "--name", name, "--network", "none", "--gpus", "1",
            stack.image, "sleep", "300"]  # fmt: skip


def assert_one_bound_allocation(stack, container: str, user: str) -> None:
    """The container runs on the wrapper's reservation: the user holds exactly that one."""
    labels = stack.docker.containers.get(container).labels
    assert labels["ds01.user"] == user and labels["ds01.managed"] == "true"
    assert "ds01.group" in labels, "stamped by the gateway: the wrapper writes no group"
    live = stack.allocator.live(user)
    assert [a.id for a in live] == [labels["ds01.allocation"]], "a second allocation was made"
    eventually(lambda: stack.allocator.live(user)[0].state == "bound", WAIT, "bound")
    assert ",".join(stack.allocator.live(user)[0].devices) == labels["ds01.gpu.devices"]


def test_the_wrapper_finds_the_gateway_and_hands_it_its_reservation(gateway_factory):
    require_docker_cli(DEBIAN_DOCKER)
    stack = gateway_factory()
    done = subprocess.run(
        [BIN / "ds01-docker", *gpu_run(stack, "wrapped-root")],
        env=wrapper_env(stack, dict(os.environ)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert_one_bound_allocation(stack, "wrapped-root", "root")


def test_an_unprivileged_user_waits_with_a_countdown_then_runs_through_the_gateway(
    gateway_factory,
    unprivileged_users,  # noqa: F811
):
    require_docker_cli(DEBIAN_DOCKER)
    alice = unprivileged_users[0]
    stack = gateway_factory()
    mig = sum(1 for d in stack.devices if d.kind == "mig")
    blocker = stack.allocator_client().allocate(count=mig)  # root takes every MIG instance
    env = wrapper_env(stack, user_env(alice))
    err_path = stack.folder / "alice.err"
    err_path.touch()
    os.chown(err_path, alice.uid, alice.gid)
    result: dict[str, object] = {}

    def alice_runs() -> None:
        argv = gpu_run(stack, "wrapped-alice")
        result["run"] = call_as(alice, run_wrapper_in_child, argv, env, str(err_path), timeout=120)

    thread = threading.Thread(target=alice_runs)
    thread.start()
    try:
        eventually(
            lambda: "ds01: no free GPU yet; waiting in queue (position 1)" in err_path.read_text(),
            WAIT,
            "the countdown line",
        )
        assert stack.allocator.live(alice.name) == []
    finally:
        stack.allocator_client().release(blocker["id"])
        thread.join(150)
    code, out = result["run"]
    assert code == 0, err_path.read_text()
    assert out.strip() == stack.docker.containers.get("wrapped-alice").id
    assert_one_bound_allocation(stack, "wrapped-alice", alice.name)


def test_a_user_who_chose_a_docker_host_keeps_it(gateway_factory, dockerd):
    """DOCKER_HOST set: the wrapper never redirects it (root here talks to dockerd itself)."""
    require_docker_cli(DEBIAN_DOCKER)
    stack = gateway_factory()
    env = {**wrapper_env(stack, dict(os.environ)), "DOCKER_HOST": dockerd.url}
    done = subprocess.run(
        [BIN / "ds01-docker", *gpu_run(stack, "wrapped-direct")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    labels = stack.docker.containers.get("wrapped-direct").labels
    assert labels["ds01.user"] == "root" and "ds01.group" not in labels


def deploy_as_user(argv: list[str], env: dict[str, str]) -> int:
    """`container deploy …` in this (forked, already unprivileged) process, with `env`."""
    from allocator import container_cli

    os.environ.clear()
    os.environ.update(env)
    return container_cli.main(argv)


def test_container_deploy_without_docker_host_goes_through_the_gateway(
    gateway_factory,
    unprivileged_users,  # noqa: F811
):
    alice = unprivileged_users[0]
    stack = gateway_factory()
    env = wrapper_env(stack, user_env(alice))
    name = f"deployed-{uuid.uuid4().hex[:6]}"  # unique: homes are shared by concurrent runs
    argv = ["--socket", env["DS01_ALLOCATOR_SOCKET"], "deploy", name,
            "--image", stack.image, "--network", "none", "--gpus", "1"]  # fmt: skip
    try:
        assert call_as(alice, deploy_as_user, argv, env, timeout=120) == 0
        labels = stack.docker.containers.get(name).labels
        assert labels["ds01.type"] == "ds01"
        assert_one_bound_allocation(stack, name, alice.name)
    finally:
        for folder in (alice.home / "workspace" / name, alice.home / "workspace"):
            try:
                folder.rmdir()
            except OSError:
                continue
