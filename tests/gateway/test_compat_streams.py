"""The compatibility matrix, streams and files: what users do besides asking for GPUs.

Terminals (run -it, exec -it, detach keys, resize, attach), stdin ended by a half-close, logs
and events that stream, everyday verbs, volumes, cp, build (legacy and BuildKit), load, and the
Python SDK — each with the real clients, as unprivileged users, through the gateway.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from typing import Any

import pytest

from ds01.containers import LABEL_USER
from tests.gateway.clients import (
    TerminalSession,
    call_as,
    compose_binary,
    require_docker_cli,
    run_as,
    run_in_pty_as,
    start_as,
    write_as_owner,
)
from tests.gateway.clients import unprivileged_users as _users_fixture
from tests.gateway.clients import user_workdir as _workdir_fixture
from tests.gateway.compat import (
    BUILDS,
    CLI_IDS,
    CLIS,
    LineReader,
    Matrix,
    assert_gpu_container,
    compose_text,
    docker_as,
    ok,
    running_container,
)
from tests.gateway.compat import matrix as _matrix_fixture
from tests.gateway.compat import remove_users_containers as _cleanup_fixture
from tests.harness.containers import remove_container

pytestmark = pytest.mark.integration
unprivileged_users = _users_fixture  # fixtures, used by name
user_workdir = _workdir_fixture
matrix = _matrix_fixture
remove_users_containers = _cleanup_fixture  # autouse


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


# --- streams and hijacked connections -------------------------------------------------------


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
    """exec -it: a hijacked exec on a pty; its resizes go to /exec/{id}/resize (owner-checked)."""
    require_docker_cli(cli)
    name = running_container(matrix, matrix.alice, cli)
    env = {"DOCKER_HOST": matrix.docker_host}
    session = TerminalSession(matrix.alice, [cli, "exec", "-it", name, "sh"], env=env, rows=30)
    try:
        session.expect("# ")
        session.ask_until("stty size; tty", "30 132")
        session.resize(25, 90)
        assert "/dev/pts/" in session.ask_until("stty size; tty", "25 90")
        session.send("exit 4\n")
        assert session.wait() == 4, session.seen
    finally:
        session.close()


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
        first.ask_until("stty size", "33 111")  # the size at start
        first.resize(21, 77)
        first.ask_until("stty size", "21 77")  # the window changed while attached
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
def test_exec_privileged_is_refused_naming_the_field(matrix: Matrix, label, cli):
    """A privileged container is refused at create; a privileged exec in one's own container
    is the same escape by another door."""
    require_docker_cli(cli)
    name = running_container(matrix, matrix.alice, cli)
    done = docker_as(matrix, matrix.alice, cli, "exec", "--privileged", name, "true")
    assert done.returncode != 0
    assert "ds01" in done.stderr and "Privileged" in done.stderr, done.stderr


@pytest.mark.parametrize(("label", "cli"), CLIS, ids=CLI_IDS)
def test_exec_i_stdin_ends_by_half_close(matrix: Matrix, label, cli):
    require_docker_cli(cli)
    name = running_container(matrix, matrix.alice, cli)
    done = docker_as(matrix, matrix.alice, cli, "exec", "-i", name, "cat", input="hi\nthere\n")
    assert ok(done) == "hi\nthere\n"


@pytest.mark.parametrize(("label", "cli"), CLIS, ids=CLI_IDS)
def test_logs_follow_streams_before_exit(matrix: Matrix, label, cli):
    require_docker_cli(cli)
    script = "echo first; while [ ! -e /tmp/go ]; do sleep 0.1; done; echo second"
    name = running_container(matrix, matrix.alice, cli, "sh", "-c", script)
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
    name = running_container(matrix, matrix.alice, cli)

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
    name = running_container(matrix, matrix.alice, cli)
    ok(docker_as(matrix, matrix.alice, cli, "cp", str(sent), f"{name}:/tmp/in.bin"))
    back = folder / "back.bin"
    ok(docker_as(matrix, matrix.alice, cli, "cp", f"{name}:/tmp/in.bin", str(back)))
    assert back.read_bytes() == sent.read_bytes()
    assert back.stat().st_uid == matrix.alice.uid


@pytest.mark.parametrize(("label", "cli", "buildkit"), BUILDS)
def test_build(matrix: Matrix, user_workdir, label, cli, buildkit):
    require_docker_cli(cli)
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


def test_compose_builds_then_runs_with_a_gpu(matrix: Matrix, user_workdir):
    """compose 1.29 builds through docker-py (a streamed context upload), then creates."""
    folder = user_workdir(matrix.alice)
    write_as_owner(matrix.alice, folder / "Dockerfile", f"FROM {matrix.image}\nRUN echo c > /c\n")
    write_as_owner(matrix.alice, folder / "ballast.bin", os.urandom(1024 * 1024))
    tag = f"ds01/compat-compose:{uuid.uuid4().hex[:8]}"
    gpu = {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
    service = json.loads(compose_text(matrix.image, gpu))
    service["services"]["gpu"].update({"build": ".", "image": tag})
    write_as_owner(matrix.alice, folder / "docker-compose.yml", json.dumps(service))
    project = f"build{uuid.uuid4().hex[:8]}"
    argv = [compose_binary(), "--project-name", project, "up", "--detach", "--build"]
    try:
        ok(run_as(matrix.alice, argv, env={"DOCKER_HOST": matrix.docker_host}, cwd=folder))
        (made,) = matrix.docker.containers.list(
            filters={"label": f"com.docker.compose.project={project}"}
        )
        assert_gpu_container(matrix, made.id, user=matrix.alice, ctype="compose", count=1)
        assert made.exec_run(["cat", "/c"]).output == b"c\n"
    finally:
        for container in matrix.docker.containers.list(all=True, filters={"ancestor": tag}):
            remove_container(container)
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
