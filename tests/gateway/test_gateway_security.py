"""Two unprivileged users on one gateway, with Debian's docker CLI: each owns only their own.

Neither user is in the `docker` group; the gateway socket is their only way to dockerd.
"""

from __future__ import annotations

import grp
import uuid

import pytest

from tests.gateway.clients import (
    DEBIAN_DOCKER,
    call_as,
    require_docker_cli,
    run_as,
)
from tests.harness.containers import remove_named
from tests.harness.waiting import eventually

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def docker_cli() -> str:
    return require_docker_cli(DEBIAN_DOCKER)


@pytest.fixture
def as_user(gateway_stack, docker_cli, unprivileged_users):
    def run(user, *args: str, input: str | None = None):
        return run_as(
            user,
            [docker_cli, *args],
            env={"DOCKER_HOST": gateway_stack.docker_host},
            input=input,
        )

    return run


@pytest.fixture
def alice_container(gateway_stack, as_user, unprivileged_users):
    alice = unprivileged_users[0]
    name = f"own-{uuid.uuid4().hex[:8]}"
    made = as_user(
        alice, "run", "-d", "--name", name, "--network", "none", gateway_stack.image, "sleep", "600"
    )
    assert made.returncode == 0, made.stderr
    yield name
    remove_named(gateway_stack.docker, name)  # unless the test removed it


def test_users_are_not_in_the_docker_group(unprivileged_users):
    try:
        members = set(grp.getgrnam("docker").gr_mem)
    except KeyError:
        members = set()
    assert not members & {u.name for u in unprivileged_users}


@pytest.mark.parametrize(
    "action",
    [
        ("stop", "-t", "0", "{name}"),
        ("rm", "-f", "{name}"),
        ("exec", "{name}", "true"),
        ("logs", "{name}"),
        ("attach", "--no-stdin", "{name}"),
        ("inspect", "{name}"),
        ("kill", "{name}"),
        ("restart", "{name}"),
        ("rename", "{name}", "stolen"),
        ("cp", "{name}:/etc/passwd", "-"),
        ("commit", "{name}", "stolen:latest"),
        ("update", "--memory", "64m", "{name}"),
    ],
)
def test_a_user_is_refused_on_another_users_container_with_one_line(
    gateway_stack,
    as_user,
    unprivileged_users,
    alice_container,
    action,
):
    bob = unprivileged_users[1]
    args = [a.format(name=alice_container) for a in action]
    refused = as_user(bob, *args)
    assert refused.returncode != 0
    assert "is not yours" in refused.stderr
    ours = [line for line in refused.stderr.splitlines() if "ds01:" in line]
    assert len(ours) == 1 and ours[0].rstrip().endswith("containers you created")
    state = gateway_stack.docker.api.inspect_container(alice_container)
    assert state["State"]["Running"] and state["Name"] == f"/{alice_container}"


def test_the_owner_may_do_all_of_it(gateway_stack, as_user, unprivileged_users, alice_container):
    alice = unprivileged_users[0]
    assert as_user(alice, "exec", alice_container, "true").returncode == 0
    echoed = as_user(alice, "exec", "-i", alice_container, "cat", input="hello\n")
    assert echoed.stdout == "hello\n"
    assert as_user(alice, "logs", alice_container).returncode == 0
    assert as_user(alice, "stop", "-t", "0", alice_container).returncode == 0
    assert as_user(alice, "start", alice_container).returncode == 0
    assert as_user(alice, "rm", "-f", alice_container).returncode == 0


def test_admin_root_acts_on_any_container(gateway_stack, alice_container):
    client = gateway_stack.gateway_client()
    client.containers.get(alice_container).stop(timeout=0)
    assert not gateway_stack.docker.api.inspect_container(alice_container)["State"]["Running"]


def test_listing_shows_everyone_but_inspect_of_others_is_refused(
    gateway_stack,
    as_user,
    unprivileged_users,
    alice_container,
):
    bob = unprivileged_users[1]
    listed = as_user(bob, "ps", "--format", "{{.Names}}")
    assert alice_container in listed.stdout.split()  # gateway.list_all_containers: true


def test_a_forged_owner_label_is_overwritten(gateway_stack, as_user, unprivileged_users):
    alice, bob = unprivileged_users
    name = f"forged-{uuid.uuid4().hex[:8]}"
    made = as_user(
        alice,
        "create",
        "--name",
        name,
        "--label",
        f"ds01.user={bob.name}",
        "--label",
        "ds01.managed=true",
        "--label",
        "ds01.group=admin",
        "--network",
        "none",
        gateway_stack.image,
        "true",
    )
    assert made.returncode == 0, made.stderr
    labels = gateway_stack.docker.api.inspect_container(name)["Config"]["Labels"]
    assert labels["ds01.user"] == alice.name and labels["ds01.group"] == "student"
    assert "ds01.managed" not in labels and labels["ds01.type"] == "docker"
    assert as_user(bob, "rm", name).returncode != 0  # the forged label gave bob nothing
    assert as_user(alice, "rm", name).returncode == 0


@pytest.mark.parametrize(
    ("flags", "field"),
    [
        (["--privileged"], "HostConfig.Privileged"),
        (["-v", "/:/host"], "HostConfig.Binds[0]"),
        (["-v", "/var/run/docker.sock:/var/run/docker.sock"], "Docker socket"),
        (["--mount", "type=bind,source=/etc,target=/e"], "HostConfig.Mounts[0]"),
        (["--device", "/dev/nvidia0"], "HostConfig.Devices"),
        (["--pid", "host"], "HostConfig.PidMode"),
        (["--cap-add", "SYS_ADMIN"], "HostConfig.CapAdd"),
        (["--security-opt", "seccomp=unconfined"], "HostConfig.SecurityOpt"),
    ],
)
def test_escapes_are_refused_naming_the_field(
    gateway_stack,
    as_user,
    unprivileged_users,
    flags,
    field,
):
    alice = unprivileged_users[0]
    name = f"esc-{uuid.uuid4().hex[:8]}"
    refused = as_user(
        alice, "create", "--name", name, "--network", "none", *flags, gateway_stack.image, "true"
    )
    assert refused.returncode != 0 and field in refused.stderr, refused.stderr
    assert not gateway_stack.docker.containers.list(all=True, filters={"name": name})


def test_the_gateway_socket_itself_cannot_be_mounted(gateway_stack, as_user, unprivileged_users):
    alice = unprivileged_users[0]
    flag = f"{gateway_stack.socket_path}:/var/run/docker.sock"
    refused = as_user(alice, "create", "-v", flag, "--network", "none", gateway_stack.image, "true")
    assert refused.returncode != 0 and "Docker socket" in refused.stderr


def test_a_bind_mount_from_the_users_home_is_allowed(gateway_stack, as_user, unprivileged_users):
    alice = unprivileged_users[0]
    name = f"home-{uuid.uuid4().hex[:8]}"
    made = as_user(
        alice,
        "run",
        "--name",
        name,
        "--network",
        "none",
        "-v",
        f"{alice.home}:/work",
        gateway_stack.image,
        "true",
    )
    assert made.returncode == 0, made.stderr
    assert as_user(alice, "rm", name).returncode == 0


def test_prune_by_a_user_removes_only_their_own(gateway_stack, as_user, unprivileged_users):
    alice, bob = unprivileged_users
    names = {}
    for user in (alice, bob):
        names[user.name] = f"prune-{user.name}-{uuid.uuid4().hex[:6]}"
        made = as_user(
            user,
            "create",
            "--name",
            names[user.name],
            "--network",
            "none",
            gateway_stack.image,
            "true",
        )
        assert made.returncode == 0, made.stderr
    assert as_user(bob, "container", "prune", "-f").returncode == 0
    remaining = {c.name for c in gateway_stack.docker.containers.list(all=True)}
    assert names[alice.name] in remaining and names[bob.name] not in remaining
    remove_named(gateway_stack.docker, names[alice.name])


def test_a_user_gpu_container_is_stamped_and_bound(gateway_stack, as_user, unprivileged_users):
    alice = unprivileged_users[0]
    name = f"gpu-{uuid.uuid4().hex[:8]}"
    made = as_user(
        alice,
        "run",
        "-d",
        "--name",
        name,
        "--gpus",
        "1",
        "--network",
        "none",
        gateway_stack.image,
        "sleep",
        "600",
    )
    assert made.returncode == 0, made.stderr
    attrs = gateway_stack.docker.api.inspect_container(name)
    labels = attrs["Config"]["Labels"]
    [request] = attrs["HostConfig"]["DeviceRequests"]
    assert labels["ds01.user"] == alice.name and labels["ds01.gpu.devices"] == ",".join(
        request["DeviceIDs"]
    )
    bound = eventually(
        lambda: [
            a
            for a in gateway_stack.allocator.live(alice.name)
            if a.container_id == attrs["Id"] and a.state == "bound"
        ],
        10,
        "allocation bound to the container",
    )
    assert bound[0].devices == tuple(request["DeviceIDs"])
    assert as_user(alice, "rm", "-f", name).returncode == 0


@pytest.mark.parametrize(
    ("flag", "field"),
    [
        ("--volumes-from={name}", "HostConfig.VolumesFrom"),
        ("--network=container:{name}", "HostConfig.NetworkMode"),
        ("--pid=container:{name}", "HostConfig.PidMode"),
    ],
)
def test_borrowing_from_another_users_container_is_refused(
    gateway_stack, as_user, unprivileged_users, alice_container, flag, field
):
    bob = unprivileged_users[1]
    refused = as_user(bob, "create", flag.format(name=alice_container), gateway_stack.image, "true")
    assert refused.returncode != 0 and field in refused.stderr and "not yours" in refused.stderr


def test_another_users_exec_instance_cannot_be_started(
    gateway_stack, unprivileged_users, alice_container
):
    exec_id = gateway_stack.docker.api.exec_create(alice_container, ["true"])["Id"]
    bob = unprivileged_users[1]
    status = call_as(bob, start_exec, str(gateway_stack.socket_path), exec_id)
    assert status[0] == 403 and "not yours" in status[1]


def start_exec(socket_path: str, exec_id: str) -> tuple[int, str]:
    """As the forked user: POST /exec/<id>/start on a raw connection."""
    import socket

    body = b'{"Detach": true}'
    request = (
        f"POST /v1.41/exec/{exec_id}/start HTTP/1.1\r\nHost: d\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(30)
        sock.connect(socket_path)
        sock.sendall(request)
        answer = sock.recv(65536).decode()
    return int(answer.split(" ")[1]), answer


def test_a_container_whose_gpu_hold_ended_cannot_start_on_someone_elses_device(
    gateway_stack, as_user, unprivileged_users
):
    alice = unprivileged_users[0]
    name = f"hold-{uuid.uuid4().hex[:8]}"
    made = as_user(
        alice,
        "run",
        "-d",
        "--name",
        name,
        "--gpus",
        "1",
        "--network",
        "none",
        gateway_stack.image,
        "sleep",
        "600",
    )
    assert made.returncode == 0, made.stderr
    allocation = gateway_stack.docker.api.inspect_container(name)["Config"]["Labels"][
        "ds01.allocation"
    ]
    assert as_user(alice, "stop", "-t", "0", name).returncode == 0
    eventually(  # gpu_hold_after_stop is 2 s in the test policy
        lambda: not [a for a in gateway_stack.allocator.live() if a.id == allocation],
        30,
        "the hold to end",
    )
    again = as_user(alice, "start", name)
    assert again.returncode != 0 and "gave its GPU back" in again.stderr
    assert not gateway_stack.docker.api.inspect_container(name)["State"]["Running"]
    assert as_user(alice, "rm", name).returncode == 0


def test_a_bind_source_swapped_for_a_symlink_after_create_still_mounts_what_was_checked(
    gateway_stack, as_user, unprivileged_users, user_workdir
):
    """dockerd resolves bind sources at start: the gateway pins what it checked at create."""
    alice = unprivileged_users[0]
    folder = user_workdir(alice)
    checked = folder / "d"
    assert run_as(alice, ["mkdir", str(checked)]).returncode == 0
    assert run_as(alice, ["sh", "-c", f"echo mine > {checked}/hostname"]).returncode == 0
    name = f"toctou-{uuid.uuid4().hex[:8]}"
    made = as_user(
        alice,
        "create",
        "--name",
        name,
        "--network",
        "none",
        "-v",
        f"{checked}:/x",
        gateway_stack.image,
        "cat",
        "/x/hostname",
    )
    assert made.returncode == 0, made.stderr
    swap = run_as(alice, ["sh", "-c", f"mv {checked} {folder}/old && ln -s /etc {checked}"])
    assert swap.returncode == 0, swap.stderr
    started = as_user(alice, "start", "-a", name)
    assert started.returncode == 0, started.stderr
    assert started.stdout == "mine\n"  # never the host's /etc/hostname
    assert as_user(alice, "rm", name).returncode == 0
    assert gateway_stack.server.release_unused_pins(older_than=0) >= 1


def test_a_symlink_out_of_home_is_refused_at_create(
    gateway_stack, as_user, unprivileged_users, user_workdir
):
    alice = unprivileged_users[0]
    folder = user_workdir(alice)
    assert run_as(alice, ["ln", "-s", "/etc", f"{folder}/etc"]).returncode == 0
    refused = as_user(
        alice, "create", "-v", f"{folder}/etc:/x", "--network", "none", gateway_stack.image, "true"
    )
    assert refused.returncode != 0 and "outside the paths you may mount" in refused.stderr


def test_a_missing_bind_source_is_refused_not_created_as_root(
    gateway_stack, as_user, unprivileged_users, user_workdir
):
    alice = unprivileged_users[0]
    folder = user_workdir(alice)
    refused = as_user(
        alice, "create", "-v", f"{folder}/nope:/x", "--network", "none", gateway_stack.image, "true"
    )
    assert refused.returncode != 0 and "does not exist" in refused.stderr
    assert not (folder / "nope").exists()


def test_a_volume_over_a_host_path_is_refused(gateway_stack, as_user, unprivileged_users):
    alice = unprivileged_users[0]
    refused = as_user(
        alice,
        "volume",
        "create",
        "--opt",
        "type=none",
        "--opt",
        "o=bind",
        "--opt",
        "device=/etc",
        f"v-{uuid.uuid4().hex[:6]}",
    )
    assert refused.returncode != 0 and "DriverOpts" in refused.stderr


def test_another_users_volume_cannot_be_removed(gateway_stack, as_user, unprivileged_users):
    alice, bob = unprivileged_users
    volume = f"vol-{uuid.uuid4().hex[:6]}"
    assert as_user(alice, "volume", "create", volume).returncode == 0
    labels = gateway_stack.docker.volumes.get(volume).attrs["Labels"]
    assert labels["ds01.user"] == alice.name
    refused = as_user(bob, "volume", "rm", volume)
    assert refused.returncode != 0 and "is not yours" in refused.stderr
    assert as_user(alice, "volume", "rm", volume).returncode == 0
