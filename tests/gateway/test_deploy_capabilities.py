"""The gateway under the capabilities its systemd unit leaves it: it still serves, still
reaches dockerd, and still sees through a symlink in a user's private folder — the reason
the unit keeps CAP_DAC_READ_SEARCH (without it a link to /etc would pass as a home path)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ds01.stack import ChildProcess, docker_ping, find_binary
from tests.core.test_deploy_units import UNITS, setting
from tests.gateway.clients import (
    DEBIAN_DOCKER,
    require_docker_cli,
    run_as,
    unprivileged_users,  # noqa: F401 - a fixture
)
from tests.harness.components import missing

pytestmark = pytest.mark.integration


def unit_bounding_set() -> str:
    """setpriv's --bounding-set for the unit's CapabilityBoundingSet (`-all,+dac_read_search`)."""
    [value] = setting(UNITS / "ds01-gateway.service", "Service", "CapabilityBoundingSet")
    caps = [c.lower().removeprefix("cap_") for c in value.split()]
    return ",".join(["-all", *(f"+{c}" for c in caps)])


@pytest.fixture
def confined_gateway(gateway_factory) -> Iterator[tuple[object, Path]]:
    """A second `ds01 gateway` beside the stack's, as root with only the unit's capabilities."""
    setpriv = find_binary("setpriv")
    if setpriv is None:
        missing("setpriv is not installed (package util-linux)")
    stack = gateway_factory()
    socket_path = stack.folder / "confined.sock"
    argv = [
        setpriv,
        f"--bounding-set={unit_bounding_set()}",
        "--inh-caps=-all",
        "--no-new-privs",
        "--",
        sys.executable, "-m", "ds01.cli", "gateway",
        "--policy", str(stack.folder / "ds01.yaml"),
        "--socket", str(socket_path),
        "--docker-host", f"unix://{stack.policy.gateway.docker_socket}",
        "--allocator-socket", str(stack.runtime.socket_path),
    ]  # fmt: skip
    child = ChildProcess("confined-gateway", argv, stack.folder / "confined.log").start()
    try:
        child.wait_until(lambda: docker_ping(socket_path), 60, "answering")
        yield stack, socket_path
    finally:
        child.stop()


def test_the_confined_gateway_serves_and_sees_through_a_private_symlink(
    confined_gateway,
    unprivileged_users,  # noqa: F811
):
    require_docker_cli(DEBIAN_DOCKER)
    stack, socket_path = confined_gateway
    alice = unprivileged_users[0]
    private = alice.home / "ds01-private"
    private.mkdir(mode=0o700, exist_ok=True)
    os.chown(private, alice.uid, alice.gid)
    os.chmod(private, 0o700)  # root without CAP_DAC_READ_SEARCH cannot look inside
    link = private / "etc-link"
    try:
        link.unlink(missing_ok=True)
        link.symlink_to("/etc")
        os.lchown(link, alice.uid, alice.gid)
        env = {"DOCKER_HOST": f"unix://{socket_path}"}
        plain = run_as(
            alice, [DEBIAN_DOCKER, "run", "--rm", "--network", "none", stack.image, "true"], env=env
        )
        assert plain.returncode == 0, plain.stderr
        escape = run_as(
            alice,
            [DEBIAN_DOCKER, "run", "--rm", "--network", "none", "-v", f"{link}:/x",
             stack.image, "true"],
            env=env,
        )  # fmt: skip
        assert escape.returncode != 0
        assert "HostConfig.Binds[0]" in escape.stderr and "outside the paths" in escape.stderr
        pinned = run_as(  # the unit's capabilities suffice to pin a source in a 0700 folder
            alice,
            [DEBIAN_DOCKER, "run", "--rm", "--network", "none", "-v", f"{private}:/x",
             stack.image, "ls", "/x"],
            env=env,
        )  # fmt: skip
        assert pinned.returncode == 0 and "etc-link" in pinned.stdout, pinned.stderr
    finally:
        link.unlink(missing_ok=True)
        private.rmdir()
