"""The compatibility matrix, between users: create flags that reach into another's things.

A create body can name another user's container (`--volumes-from`, `--pid`/`--network`/`--ipc
container:<name>`) or named volume (`-v <volume>:…`); through the real CLIs, each must be
refused with the gateway's message.
"""

from __future__ import annotations

import uuid

import pytest

from tests.gateway.clients import require_docker_cli, write_as_owner
from tests.gateway.clients import unprivileged_users as _users_fixture
from tests.gateway.clients import user_workdir as _workdir_fixture
from tests.gateway.compat import CLI_IDS, CLIS, Matrix, docker_as, ok
from tests.gateway.compat import matrix as _matrix_fixture
from tests.gateway.compat import remove_users_containers as _cleanup_fixture

pytestmark = pytest.mark.integration
unprivileged_users = _users_fixture  # fixtures, used by name
user_workdir = _workdir_fixture
matrix = _matrix_fixture
remove_users_containers = _cleanup_fixture  # autouse


@pytest.fixture
def alices_private_container(matrix: Matrix, user_workdir) -> str:
    """Alice's container with her 0700 folder bind-mounted: what bob must not reach."""
    folder = user_workdir(matrix.alice)
    write_as_owner(matrix.alice, folder / "private/note", "alice's only\n")
    (folder / "private").chmod(0o700)
    name = f"alice-{uuid.uuid4().hex[:8]}"
    args = ["run", "--detach", "--name", name, "--network", "none"]
    args += ["--volume", f"{folder / 'private'}:/private", matrix.dev_image, "sleep", "3600"]
    ok(docker_as(matrix, matrix.alice, CLIS[0][1], *args))
    return name


@pytest.mark.parametrize(
    "join",
    [
        ["--volumes-from", "{c}"],  # HostConfig.VolumesFrom: her bind mounts, her files
        ["--pid", "container:{c}"],  # HostConfig.PidMode: her processes (ptrace is allowed)
        ["--network", "container:{c}"],  # HostConfig.NetworkMode: her traffic
        ["--ipc", "container:{c}"],  # HostConfig.IpcMode: her shared memory
    ],
    ids=["volumes-from", "pid", "network", "ipc"],
)
@pytest.mark.parametrize(("label", "cli"), CLIS, ids=CLI_IDS)
def test_another_users_container_cannot_be_joined(
    matrix: Matrix, alices_private_container, label, cli, join
):
    require_docker_cli(cli)
    flags = [part.format(c=alices_private_container) for part in join]
    if flags[0] != "--network":
        flags += ["--network", "none"]
    done = docker_as(
        matrix, matrix.bob, cli, "run", "--rm", *flags, matrix.dev_image, "cat", "/proc/1/cmdline"
    )
    assert done.returncode != 0, done.stdout
    assert "ds01" in done.stderr and "not yours" in done.stderr, done.stderr


def test_another_users_named_volume_cannot_be_mounted(matrix: Matrix):
    cli = require_docker_cli(CLIS[0][1])
    volume = f"alice-{uuid.uuid4().hex[:8]}"
    ok(docker_as(matrix, matrix.alice, cli, "volume", "create", volume))
    try:
        base = ["run", "--rm", "--network", "none", "--volume", f"{volume}:/v", matrix.image]
        ok(docker_as(matrix, matrix.alice, cli, *base, "sh", "-c", "echo hers > /v/f"))
        done = docker_as(matrix, matrix.bob, cli, *base, "cat", "/v/f")
        assert done.returncode != 0 and "ds01" in done.stderr, done.stdout + done.stderr
    finally:
        matrix.docker.volumes.get(volume).remove(force=True)
