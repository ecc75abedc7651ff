"""Which Docker host the wrapper's real docker gets: the gateway, unless the user chose one."""

from __future__ import annotations

import json
import socket

import pytest

from allocator.docker_endpoint import (
    DEFAULT_GATEWAY_SOCKET,
    GATEWAY_SOCKET_ENV,
    gateway_host,
    gateway_socket_path,
    global_options,
    is_socket,
    names_a_host,
)
from ds01.policy_model import GatewayPolicy


def test_global_options_stop_at_the_subcommand():
    assert global_options(["--debug", "-H", "unix:///x", "ps", "-a"]) == ["--debug", "-H"]
    assert global_options(["run", "-H", "x"]) == []


@pytest.mark.parametrize(
    "argv",
    [
        ["-H", "unix:///mine.sock", "ps"],
        ["-Hunix:///mine.sock", "ps"],
        ["--host=tcp://h:2375", "ps"],
        ["--host", "tcp://h:2375", "ps"],
        ["-c", "rootless", "ps"],
        ["--context=rootless", "run", "x"],
    ],
)
def test_a_host_on_the_command_line_is_the_users_choice(argv):
    assert names_a_host(argv)


def test_options_after_the_subcommand_name_no_host():
    assert not names_a_host(["run", "-c", "512", "--host", "x", "img"])  # run's cpu-shares
    assert not names_a_host(["--debug", "ps"])


def always_there(_path: str) -> bool:
    return True


def fixed(path: str, warning: str = ""):
    return lambda _environ: (path, warning)


def test_no_choice_and_a_gateway_socket_points_docker_at_it():
    host, warning = gateway_host(
        ["ps"], {"HOME": "/nonexistent"}, socket_path=fixed("/run/g.sock"), exists=always_there
    )
    assert (host, warning) == ("unix:///run/g.sock", "")


def test_no_gateway_socket_leaves_docker_alone():
    host, _ = gateway_host(
        ["ps"], {"HOME": "/nonexistent"}, socket_path=fixed("/run/g.sock"), exists=lambda _: False
    )
    assert host is None


@pytest.mark.parametrize(
    "environ",
    [{"DOCKER_HOST": "unix:///mine.sock"}, {"DOCKER_CONTEXT": "rootless"}],
    ids=["DOCKER_HOST", "DOCKER_CONTEXT"],
)
def test_the_users_environment_wins(environ):
    host, _ = gateway_host(["ps"], environ, socket_path=fixed("/g"), exists=always_there)
    assert host is None


def test_a_context_chosen_with_docker_context_use_wins(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"currentContext": "rootless"}))
    environ = {"DOCKER_CONFIG": str(tmp_path)}
    assert gateway_host(["ps"], environ, socket_path=fixed("/g"), exists=always_there)[0] is None
    (tmp_path / "config.json").write_text(json.dumps({"currentContext": "default"}))
    assert gateway_host(["ps"], environ, socket_path=fixed("/g"), exists=always_there)[0] == (
        "unix:///g"
    )
    (tmp_path / "config.json").write_text("{not json")  # docker's problem, not ours
    assert gateway_host(["ps"], environ, socket_path=fixed("/g"), exists=always_there)[0]


def test_socket_from_the_environment_then_the_policy(tmp_path):
    policy = tmp_path / "ds01.yaml"
    policy.write_text("gateway: {socket: /srv/ds01/docker.sock}\n")
    assert gateway_socket_path({GATEWAY_SOCKET_ENV: "/e.sock", "DS01_POLICY": str(policy)}) == (
        "/e.sock",
        "",
    )
    assert gateway_socket_path({"DS01_POLICY": str(policy)}) == ("/srv/ds01/docker.sock", "")


def test_an_invalid_policy_falls_back_with_a_warning_naming_the_key(tmp_path):
    policy = tmp_path / "ds01.yaml"
    policy.write_text("gateway: {socket: [not, a, path]}\n")
    path, warning = gateway_socket_path({"DS01_POLICY": str(policy)})
    assert path == "/run/ds01/docker.sock"
    assert "gateway.socket" in warning and "looking for the gateway at" in warning


def test_a_missing_named_policy_falls_back_with_a_warning(tmp_path):
    path, warning = gateway_socket_path({"DS01_POLICY": str(tmp_path / "none.yaml")})
    assert path == "/run/ds01/docker.sock" and "none.yaml" in warning


def test_the_default_socket_is_the_policys_default():
    assert DEFAULT_GATEWAY_SOCKET == GatewayPolicy().socket


def test_only_a_socket_counts_as_the_gateway(tmp_path):
    plain = tmp_path / "file.sock"
    plain.write_text("")
    assert not is_socket(str(plain)) and not is_socket(str(tmp_path / "missing"))
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(tmp_path / "real.sock"))
        assert is_socket(str(tmp_path / "real.sock"))
