"""Issue 15's proof: the owner of an idle container learns of the warning and the stop on the
terminal they are logged in on and by mail (a real SMTP sink behind Alertmanager), and then
reads when and why it stopped with `container ls` and `container history` as themselves;
another logged-in user's terminal receives nothing.

The terminals are real pseudo-terminals owned by the users, listed in a utmp file in glibc's
on-disk format (the policy's `notifications.utmp_path`), exactly as login/sshd record them.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import select
import uuid
from pathlib import Path

import pytest

from enforcer.terminals import USER_PROCESS, UtmpEntry, pack_utmp
from tests.gateway.clients import DEBIAN_DOCKER, call_as, require_docker_cli, run_as

pytestmark = [pytest.mark.e2e, pytest.mark.integration]
WAIT = 90.0  # bounds a hang; the policy's idle timeout is 15s


@pytest.fixture
def stack_policy_extra(smtp_sink, tmp_path: Path) -> str:
    return f"""
notifications:
  terminal: true
  container_file: true
  utmp_path: {tmp_path / "utmp"}
  email:
    to: "{{{{ user }}}}@example.org"
    from: ds01@example.org
    smarthost: {smtp_sink.smarthost}
    require_tls: false
"""


class Terminal:
    """A pseudo-terminal whose slave a user owns (mode 0620, `mesg y`), read from the master."""

    def __init__(self, uid: int, gid: int) -> None:
        self.master, self.slave = os.openpty()
        path = os.ttyname(self.slave)
        os.chown(path, uid, gid)
        os.chmod(path, 0o620)
        self.line = path.removeprefix("/dev/")
        self.seen = b""

    def read(self) -> str:
        while select.select([self.master], [], [], 0)[0]:
            self.seen += os.read(self.master, 65536)
        return self.seen.decode(errors="replace")

    def close(self) -> None:
        os.close(self.master)
        os.close(self.slave)


def container_cli_as_child(argv: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    """`container argv` in a process that has become the user (see call_as): code, out, err."""
    from allocator import container_cli

    os.environ.clear()
    os.environ.update(env)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = container_cli.main(argv)
    return code, out.getvalue(), err.getvalue()


def test_the_owner_is_told_on_their_terminal_and_by_mail_then_reads_why_it_stopped(
    stack, docker_client, unprivileged_users, smtp_sink, tmp_path, eventually
):
    docker_cli = require_docker_cli(DEBIAN_DOCKER)
    alice, bob = unprivileged_users
    alice_tty, bob_tty = Terminal(alice.uid, alice.gid), Terminal(bob.uid, bob.gid)
    try:
        (tmp_path / "utmp").write_bytes(
            pack_utmp(UtmpEntry(USER_PROCESS, os.getpid(), alice_tty.line, alice.name, "", 0))
            + pack_utmp(UtmpEntry(USER_PROCESS, os.getpid(), bob_tty.line, bob.name, "", 0))
        )
        env = {"DOCKER_HOST": stack.endpoints.gateway_host}
        name = f"idle-{uuid.uuid4().hex[:6]}"
        made = run_as(
            alice,
            [docker_cli, "run", "-d", "--name", name, "--gpus", "1", "--network", "none",
             "ds01/busybox:latest", "sleep", "3600"],
            env=env,
        )  # fmt: skip
        assert made.returncode == 0, made.stderr

        # The warning, on alice's terminal and in her mailbox (the `{{ user }}` template)
        eventually(lambda: f"(warning) about container {name}" in alice_tty.read(), WAIT, "tty")
        mail = eventually(lambda: smtp_sink.mails(f"{alice.name}@example.org"), WAIT, "mail")
        assert mail[0].subject == f"[ds01] warning: GPU container {name} (idle)"
        assert f"GPU container {name} of {alice.name} has an idle GPU" in mail[0].text
        # ... then the stop, on the same terminal
        eventually(lambda: f"(stop) about container {name}" in alice_tty.read(), WAIT, "stop")
        assert "stopping this container now because its GPU has been idle" in alice_tty.read()
        eventually(lambda: docker_client.containers.get(name).status == "exited", WAIT, "the stop")
        assert bob_tty.read() == "", "another user's terminal got a message"
        assert smtp_sink.mails(f"{bob.name}@example.org") == []

        cli_env = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(alice.home),
            "DOCKER_HOST": stack.endpoints.gateway_host,
            "DS01_ALLOCATOR_SOCKET": stack.endpoints.allocator_socket,
            "DS01_EXPORTER_URL": stack.endpoints.exporter,
            "TZ": "UTC",
        }
        code, out, err = eventually(
            lambda: (
                (r := call_as(alice, container_cli_as_child, ["ls"], cli_env))
                and "stopped" in r[1]
                and r
            ),
            WAIT,
            "container ls showing the stop",
        )
        assert code == 0, err
        assert f"{name} stopped at " in out and "its GPU was idle since" in out
        assert f"`container retire {name}` frees its GPU now" in out
        assert "MIG-" not in out  # index and profile, never the UUID
        code, out, err = call_as(alice, container_cli_as_child, ["history"], cli_env)
        assert code == 0, err
        lines = [line for line in out.splitlines() if name in line]
        assert any("warning (idle)" in line for line in lines), out
        assert any("stop (idle)" in line for line in lines), out
        assert any("  grant  " in line and "(3g.71gb)" in line for line in lines), out
        warning = next(line for line in lines if "warning (idle)" in line)
        assert "has an idle GPU and will be stopped" in warning  # what she was told
        code, out, err = call_as(alice, container_cli_as_child, ["ls", "--json"], cli_env)
        [listed] = [c for c in json.loads(out)["containers"] if c["name"] == name]
        assert listed["state"] == "exited" and listed["stop"]["reason"] == "idle"
        assert listed["devices"][0]["uuid"].startswith("MIG-")  # UUIDs only in --json / -v
        code, out, err = call_as(alice, container_cli_as_child, ["history", "--json"], cli_env)
        kinds = [(h["kind"], h["container"]) for h in json.loads(out)["history"]]
        assert ("warning", name) in kinds and ("stop", name) in kinds
        code, out, err = call_as(
            alice, container_cli_as_child, ["history", "--user", bob.name], cli_env
        )
        assert code == 1 and "only an admin" in err
    finally:
        alice_tty.close()
        bob_tty.close()


def gpu_status_as_child(argv: list[str], env: dict[str, str]) -> tuple[int, str]:
    """`gpu-status argv` in a process that has become the user (see call_as): code, stdout."""
    from ds01.gpu_status.cli import main

    os.environ.clear()
    os.environ.update(env)
    out = io.StringIO()
    code = main(argv, out=out)
    return code, out.getvalue()


def test_what_is_in_force_shows_in_container_ls_and_gpu_status_mine(
    stack, unprivileged_users, user_workdir, tmp_path, eventually
):
    docker_cli = require_docker_cli(DEBIAN_DOCKER)
    alice = unprivileged_users[0]
    # the policy users read (the stack's own lives in a folder only root may open)
    policy = Path(stack.env["DS01_POLICY"]).read_text()
    exemption = f"{{user: {alice.name}, from: [idle], until: 2099-01-31, reason: thesis}}"
    policy += f"exemptions:\n  - {exemption}\n"
    readable = Path(user_workdir(alice)) / "ds01.yaml"
    readable.write_text(policy)
    workspace = user_workdir(alice)
    (workspace / ".keep-alive").touch()
    name = f"kept-{uuid.uuid4().hex[:6]}"
    made = run_as(
        alice,
        [docker_cli, "run", "-d", "--name", name, "--gpus", "1", "--network", "none",
         "-v", f"{workspace}:/workspace", "ds01/busybox:latest", "sleep", "3600"],
        env={"DOCKER_HOST": stack.endpoints.gateway_host},
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(alice.home),
        "DOCKER_HOST": stack.endpoints.gateway_host,
        "DS01_ALLOCATOR_SOCKET": stack.endpoints.allocator_socket,
        "DS01_EXPORTER_URL": stack.endpoints.exporter,
        "DS01_PROMETHEUS_URL": stack.endpoints.prometheus,
        "DS01_POLICY": str(readable),
        "TZ": "UTC",
    }
    code, out, err = eventually(
        lambda: (
            (r := call_as(alice, container_cli_as_child, ["ls"], env))
            and "keep-alive" in r[1]
            and r
        ),
        WAIT,
        "container ls with the keep-alive",
    )
    assert code == 0, err
    row = next(line for line in out.splitlines() if line.startswith(name))
    assert "max runtime stop)" in row  # the idle stop is held off: the runtime stop is next
    assert re.search(r"keep-alive until \S+ \d\d:\d\d \(in (1d|23h \d+m)\)", row), row
    assert "exempt from idle until 2099-02-01 00:00 (thesis)" in row
    assert "+0000" not in out and "UTC" not in out  # local, humanised; never Go's format
    code, text = eventually(
        lambda: (r := call_as(alice, gpu_status_as_child, ["--mine"], env)) and name in r[1] and r,
        WAIT,
        "gpu-status --mine with the container",
    )
    assert code == 0
    forced = text.split(f"In force for {alice.name}:\n", 1)[1]
    assert f"  {name} on 0:" in forced and "next max runtime stop" in forced
    assert (
        "keep-alive until" in forced
        and "exempt from idle until 2099-02-01 00:00 (thesis)" in forced
    )
