"""The files under deploy/ start our services with flags they accept, and agree on one layout:
dockerd's socket where only root and the ds01 services reach it, the gateway in front of it,
and every login shell pointed at the gateway."""

from __future__ import annotations

import importlib
import os
import shlex
import subprocess
from pathlib import Path

import pytest

from ds01.policy import load_policy
from ds01.policy_model import GatewayPolicy, Services, default_policy

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
UNITS = DEPLOY / "systemd"
SERVICES = {
    "exporter": "exporter.cli",
    "enforcer": "enforcer.cli",
    "allocator": "allocator.cli",
    "gateway": "allocator.gateway_cli",
}
DOCKER_READERS = ("exporter", "enforcer", "allocator", "gateway")  # talk to dockerd itself


def unit_file(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit or drop-in: section -> key -> every value in order (an empty one resets)."""
    values: dict[str, dict[str, list[str]]] = {}
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            values.setdefault(section, {})
            continue
        key, _, value = line.partition("=")
        values[section].setdefault(key.strip(), []).append(value.strip())
    return values


def setting(path: Path, section: str, key: str) -> list[str]:
    return unit_file(path).get(section, {}).get(key, [])


def exec_start(unit: Path) -> list[str]:
    values = setting(unit, "Service", "ExecStart")
    if not values:
        raise AssertionError(f"{unit.name} has no ExecStart")
    return shlex.split(values[-1])


def parsed_args(service: str):
    argv = exec_start(UNITS / f"ds01-{service}.service")
    assert argv[0].endswith("/ds01") and argv[1] == service
    parser = importlib.import_module(SERVICES[service]).build_parser()
    return parser.parse_args(argv[2:])


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_unit_flags_parse(service):
    args = parsed_args(service)
    assert args.policy == "/etc/ds01/ds01.yaml"


@pytest.mark.parametrize("unit", sorted(UNITS.glob("*.service")), ids=lambda p: p.name)
def test_units_are_hardened(unit):
    text = unit.read_text()
    assert "NoNewPrivileges=yes" in text, f"{unit.name} lacks NoNewPrivileges=yes"
    if unit.name != "ds01-gateway.service":  # no mount namespace for it: see the next test
        for option in ("ProtectSystem=strict", "PrivateTmp=yes"):
            assert option in text, f"{unit.name} lacks {option}"


def test_gateway_sees_the_paths_dockerd_sees():
    """Bind sources are judged by what they resolve to and pinned by mounts dockerd must see:
    any mount namespace (Protect*, Private*) would hide the pins from dockerd."""
    unit = UNITS / "ds01-gateway.service"
    for option in (
        "ProtectSystem",
        "ProtectHome",
        "PrivateTmp",
        "PrivateDevices",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectKernelLogs",
        "ProtectControlGroups",
        "ReadOnlyPaths",
        "InaccessiblePaths",
        "TemporaryFileSystem",
    ):
        assert setting(unit, "Service", option) in ([], ["no"]), option
    assert setting(unit, "Service", "User") in ([], ["root"])
    caps = setting(unit, "Service", "CapabilityBoundingSet")
    assert caps == ["CAP_DAC_READ_SEARCH CAP_SYS_ADMIN"]
    # the socket's folder must outlive a restart of any one unit that declares it
    for name in ("ds01-gateway.service", "ds01-allocator.service"):
        assert setting(UNITS / name, "Service", "RuntimeDirectoryPreserve") == ["yes"], name


def test_gateway_starts_after_dockerd_and_the_allocator():
    unit = UNITS / "ds01-gateway.service"
    after = set(" ".join(setting(unit, "Unit", "After")).split())
    assert {"docker.service", "ds01-allocator.service"} <= after
    assert "docker.service" in " ".join(setting(unit, "Unit", "Requires")).split()
    # pulled in, but an allocator restart must not restart the gateway (open sessions)
    assert "ds01-allocator.service" in " ".join(setting(unit, "Unit", "Wants")).split()
    assert "ds01-allocator.service" not in " ".join(setting(unit, "Unit", "Requires")).split()
    assert not setting(unit, "Unit", "BindsTo") and not setting(unit, "Unit", "PartOf")


def dockerd_socket_dropin() -> tuple[str, str, str]:
    """(socket path, mode, group) that docker.socket gets from our drop-in."""
    dropin = UNITS / "docker.socket.d" / "ds01.conf"
    listen = setting(dropin, "Socket", "ListenStream")
    assert listen[0] == "", "the drop-in must reset Debian's /run/docker.sock first"
    assert len(listen) == 2, "dockerd must listen on one socket only"
    mode = setting(dropin, "Socket", "SocketMode")[-1]
    group = setting(dropin, "Socket", "SocketGroup")[-1]
    return listen[1], mode, group


def test_dockerd_socket_is_closed_to_users():
    path, mode, group = dockerd_socket_dropin()
    assert path == GatewayPolicy().docker_socket
    assert int(mode, 8) & 0o007 == 0, "no access for others"
    assert group not in ("docker", "users"), "the socket's group must have no people in it"


@pytest.mark.parametrize("service", DOCKER_READERS)
def test_services_reach_dockerd_on_its_moved_socket(service):
    """Every service that talks to dockerd names its new socket and can open it."""
    path, _, group = dockerd_socket_dropin()
    assert parsed_args(service).docker_host == f"unix://{path}"
    unit = UNITS / f"ds01-{service}.service"
    user = (setting(unit, "Service", "User") or ["root"])[-1]
    groups = setting(unit, "Service", "Group") + setting(unit, "Service", "SupplementaryGroups")
    assert "docker" not in " ".join(groups).split(), f"{unit.name}: the docker group is gone"
    assert user == "root" or group in " ".join(groups).split(), f"{unit.name} cannot open {path}"


def test_gateway_serves_where_the_login_shells_point():
    args = parsed_args("gateway")
    assert args.socket == GatewayPolicy().socket
    assert args.allocator_socket == parsed_args("allocator").socket
    assert args.allocator_socket == Services().allocator_socket
    link = (DEPLOY / "tmpfiles.d" / "ds01-docker-sock.conf").read_text().split("\n")
    entries = [line.split() for line in link if line.strip() and not line.startswith("#")]
    assert entries == [["L+", "/run/docker.sock", "-", "-", "-", "-", args.socket]]


def profile_docker_host(env: dict[str, str], variable: str = "DOCKER_HOST") -> str:
    """`variable` after a POSIX login shell sources the profile.d script."""
    script = DEPLOY / "profile.d" / "ds01-docker-host.sh"
    done = subprocess.run(
        ["sh", "-c", f'. "$1"; printf %s "${{{variable}:-}}"', "sh", str(script)],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stderr == ""
    return done.stdout


def test_login_shells_talk_to_the_gateway():
    assert profile_docker_host({}) == f"unix://{parsed_args('gateway').socket}"


def test_compose_waits_longer_than_the_gpu_queue():
    """compose 1.x gives up after 60 s; a GPU create may wait gpu_wait (3 min) in the queue."""
    waited = float(profile_docker_host({}, "COMPOSE_HTTP_TIMEOUT"))
    assert waited > default_policy().gpu_wait
    assert profile_docker_host({"COMPOSE_HTTP_TIMEOUT": "900"}, "COMPOSE_HTTP_TIMEOUT") == "900"


@pytest.mark.parametrize(
    "env, expected",
    [
        ({"DOCKER_HOST": "unix:///home/alice/rootless.sock"}, "unix:///home/alice/rootless.sock"),
        ({"DOCKER_CONTEXT": "mine"}, ""),
    ],
    ids=["own-docker-host", "own-context"],
)
def test_login_shells_keep_a_users_own_choice(env, expected):
    assert profile_docker_host(env) == expected


def test_alertmanager_is_behind_basic_auth_without_a_cluster_port():
    argv = exec_start(UNITS / "ds01-alertmanager.service")
    assert "--web.config.file=/etc/ds01/alertmanager/web.yml" in argv
    assert "--cluster.listen-address=" in argv


def test_prometheus_has_no_lifecycle_or_admin_api_and_reloads_by_sighup():
    unit = UNITS / "ds01-prometheus.service"
    argv = exec_start(unit)
    assert not [a for a in argv if a.startswith(("--web.enable-lifecycle", "--web.enable-admin"))]
    assert setting(unit, "Service", "ExecReload") == ["/bin/kill -HUP $MAINPID"]
    assert Services().alertmanager_password_file.startswith("/etc/ds01/alertmanager/")


def test_the_example_policy_shows_the_gateway_defaults_the_units_use():
    example = load_policy(DEPLOY.parent / "config" / "ds01.example.yaml")
    assert example.gateway == GatewayPolicy()
    assert parsed_args("gateway").socket == example.gateway.socket
    assert parsed_args("gateway").docker_host == f"unix://{example.gateway.docker_socket}"


def test_the_allocator_reads_the_audit_log_the_enforcer_writes():
    """`container history` is served by the allocator from the enforcer's root-only log."""
    enforcer, allocator = parsed_args("enforcer"), parsed_args("allocator")
    written = enforcer.audit_log or os.path.join(enforcer.state_dir, "enforcer-audit.jsonl")
    assert allocator.audit_log == written
    unit = UNITS / "ds01-allocator.service"
    caps = setting(unit, "Service", "CapabilityBoundingSet")
    enforcer_group = setting(UNITS / "ds01-enforcer.service", "Service", "Group")[-1]
    if caps and not caps[-1]:  # root without CAP_DAC_*: it reads by group, like anyone
        assert enforcer_group in " ".join(setting(unit, "Service", "SupplementaryGroups")).split()
