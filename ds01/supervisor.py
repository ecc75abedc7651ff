"""Run the whole stack on one host: exporter, allocator, gateway, enforcer, Prometheus,
Alertmanager.

`ds01 up` and the end-to-end tests both use `StackSupervisor`: free local ports, one state
folder, configs generated from the repository's generators, a fresh enforcer token, every
child supervised and stopped in reverse order.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from .policy import Policy, PolicyError, load_policy
from .promconfig import (
    AlertmanagerSettings,
    PrometheusSettings,
    render_alertmanager_config,
    render_prometheus_config,
)
from .rulegen import RuleSettings, render_rule_files
from .stack import (
    Alertmanager,
    ChildProcess,
    Dockerd,
    Prometheus,
    StackError,
    docker_ping,
    ensure_busybox_image,
    free_port,
    start_alertmanager,
    start_dockerd,
    start_prometheus,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Timings:
    """Intervals of the moving parts, in seconds: production defaults, compressed in tests."""

    collect_interval: float = 5.0
    scrape_interval: float = 15.0
    evaluation_interval: float = 15.0
    group_wait: float = 0.0
    group_interval: float = 60.0
    repeat_interval: float = 300.0
    exporter_stale_after: float = 120.0

    @classmethod
    def compressed(cls) -> Timings:
        return cls(1.0, 1.0, 1.0, 0.0, 2.0, 10.0, 15.0)


@dataclass(frozen=True)
class ServicePorts:
    """TCP ports of one stack; a cluster gives each node its own set and one shared pair of
    Prometheus and Alertmanager ports (ds01/cluster_up.py)."""

    exporter: int
    enforcer: int
    allocator: int
    prometheus: int
    alertmanager: int

    @classmethod
    def free(cls) -> ServicePorts:
        return cls(free_port(), free_port(), free_port(), free_port(), free_port())


@dataclass(frozen=True)
class StackOptions:
    policy_path: Path
    state_dir: Path
    timings: Timings = field(default_factory=Timings)
    gpu_backend: str | None = None  # None: the policy's gpu.backend
    sim_topology: str | None = None
    docker_host: str | None = None  # None: DOCKER_HOST, the local socket, else a private dockerd
    log_level: str = "INFO"
    ports: ServicePorts | None = None  # None: free ports
    monitoring: bool = True  # False: a cluster node; Prometheus/Alertmanager run once, elsewhere
    token_file: Path | None = None  # None: a fresh enforcer token in the state folder


@dataclass
class Endpoints:
    """Where each part answers; printed in the banner and used by tests."""

    docker_host: str = ""
    docker_private: bool = False
    exporter: str = ""
    enforcer: str = ""
    allocator_socket: str = ""
    allocator_http: str = ""
    gateway_socket: str = ""  # empty: not started (see gateway_note)
    gateway_note: str = ""
    prometheus: str = ""
    alertmanager: str = ""
    alertmanager_http_config: str = ""  # amtool --http.config.file (the admin's basic auth)
    token_file: str = ""
    sim_state: str = ""
    audit_log: str = ""
    backend: str = ""
    local_image: str = ""  # a tiny image imported here, for a private dockerd with no registry

    @property
    def gateway_host(self) -> str:
        """The DOCKER_HOST users should use: the gateway, or dockerd when there is none."""
        return f"unix://{self.gateway_socket}" if self.gateway_socket else self.docker_host


def _py(*args: str) -> list[str]:
    return [sys.executable, "-m", "ds01.cli", *args]


def rule_files(policy: Policy, timings: Timings) -> dict[str, str]:
    """The alert and recording rules for this stack's timings, as `rules/<name>` -> text."""
    settings = RuleSettings.from_policy(
        policy,
        exporter_stale_after=timings.exporter_stale_after,
        usage_interval=timings.evaluation_interval,
    )
    return {f"rules/{name}": text for name, text in render_rule_files(settings).items()}


def rewrite_rule_files(prometheus_dir: Path, policy: Policy, timings: Timings) -> None:
    """A reloaded policy's rules over the running Prometheus' files (it re-reads them on SIGHUP)."""
    for name, text in rule_files(policy, timings).items():
        (prometheus_dir / name).write_text(text)


def start_monitoring(
    state: Path,
    policy: Policy,
    timings: Timings,
    *,
    ports: tuple[int, int],
    routes: dict[str, Any] | None = None,
    targets: dict[str, Any] | None = None,
) -> tuple[Alertmanager, Prometheus]:
    """One Alertmanager and one Prometheus rendered from the policy for these timings, the
    Prometheus sending to that Alertmanager with its password. `ports`: (Alertmanager,
    Prometheus); `routes` and `targets`: the layout's own settings (one host, or none when
    the policy lists its nodes)."""
    alerts = AlertmanagerSettings.from_policy(
        policy,
        group_wait=timings.group_wait,
        group_interval=timings.group_interval,
        repeat_interval=timings.repeat_interval,
        **(routes or {}),
    )
    alertmanager = start_alertmanager(
        state / "alertmanager", render_alertmanager_config(alerts), port=ports[0]
    )
    assert alertmanager.sender_password_file is not None
    try:
        prom = PrometheusSettings.from_policy(
            policy,
            alertmanager_targets=(f"127.0.0.1:{alertmanager.port}",),
            alertmanager_password_file=str(alertmanager.sender_password_file),
            scrape_interval=timings.scrape_interval,
            evaluation_interval=timings.evaluation_interval,
            **(targets or {}),
        )
        prometheus = start_prometheus(
            state / "prometheus",
            render_prometheus_config(prom),
            port=ports[1],
            extra_files=rule_files(policy, timings),
        )
    except BaseException:
        alertmanager.stop()  # the caller never got it: nobody else would stop it
        raise
    return alertmanager, prometheus


def _duration(seconds: float) -> str:
    return f"{int(seconds * 1000)}ms"


LOCAL_DOCKER = "unix:///var/run/docker.sock"


def unreachable_folder(path: Path) -> Path | None:
    """The first folder above `path` that other users cannot traverse (None: all can)."""
    for folder in reversed(path.absolute().parents):
        try:
            if not folder.stat().st_mode & 0o001:
                return folder
        except OSError:
            return folder
    return None


def _http_ready(url: str) -> Callable[[], bool]:
    return lambda: requests.get(url, timeout=1).status_code == 200


def docker_answers(url: str) -> bool:
    """True when a Docker engine answers at `url`."""
    import docker

    try:
        client = docker.DockerClient(base_url=url, timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        logger.debug("no docker engine at %s", url, exc_info=True)
        return False


RELOADED_ON_SIGHUP = ("exporter", "allocator", "gateway", "enforcer", "prometheus")


class StackSupervisor:
    """Start every part, wait until each is healthy, stop all of them cleanly."""

    def __init__(self, options: StackOptions) -> None:
        self.options = options
        self.policy: Policy = load_policy(options.policy_path)
        self.endpoints = Endpoints()
        self.children: list[ChildProcess] = []
        self._dockerd: Dockerd | None = None
        self._prometheus: Prometheus | None = None
        self._alertmanager: Alertmanager | None = None

    # -- start ---------------------------------------------------------------------------------

    def start(self) -> Endpoints:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self.endpoints

    def _start(self) -> None:
        state = self.options.state_dir
        state.mkdir(parents=True, exist_ok=True)
        (state / "logs").mkdir(exist_ok=True)
        self._start_docker()
        token = str(self.options.token_file) if self.options.token_file else self._write_token()
        self.endpoints.token_file = token
        ports = self.options.ports or ServicePorts.free()
        self._start_services(token, ports)
        if self.options.monitoring:
            self._start_monitoring(token, ports)

    def _start_services(self, token: str, ports: ServicePorts) -> None:
        """Exporter, allocator, gateway and enforcer: what runs on every GPU host."""
        state, ep, t = self.options.state_dir, self.endpoints, self.options.timings
        self._set_service_endpoints(ports)
        common = ["--policy", str(self.options.policy_path), "--docker-host", ep.docker_host]
        common += ["--log-level", self.options.log_level]
        gpu = self._gpu_flags()
        extensions = str(state / "allocator" / "extensions.json")  # the allocator writes it
        exporter = _py("exporter", *common, *gpu, "--state-dir", str(state / "exporter"),
                       "--listen", f"127.0.0.1:{ports.exporter}",
                       "--collect-interval", _duration(t.collect_interval),
                       "--extensions-file", extensions)  # fmt: skip
        self._spawn("exporter", exporter, _http_ready(f"{ep.exporter}/healthz"))
        allocator = _py("allocator", *common, *gpu, "--state-dir", str(state / "allocator"),
                        "--socket", ep.allocator_socket, "--listen", f"127.0.0.1:{ports.allocator}",
                        "--token-file", token, "--audit-log", ep.audit_log)  # fmt: skip
        self._spawn("allocator", allocator, _http_ready(f"{ep.allocator_http}/healthz"))
        self._start_gateway(common)
        enforcer = _py("enforcer", *common, "--state-dir", str(state / "enforcer"),
                       "--listen", f"127.0.0.1:{ports.enforcer}", "--token-file", token,
                       "--prometheus-url", ep.prometheus, "--audit-log", ep.audit_log,
                       "--watch-interval", _duration(t.evaluation_interval))  # fmt: skip
        self._spawn("enforcer", enforcer, _http_ready(f"{ep.enforcer}/healthz"))
        ep.backend = self._exporter_backend()

    def _set_service_endpoints(self, ports: ServicePorts) -> None:
        state, ep = self.options.state_dir, self.endpoints
        ep.sim_state = str(state / "sim-gpu-state.json")
        ep.audit_log = str(state / "enforcer" / "enforcer-audit.jsonl")
        ep.exporter = f"http://127.0.0.1:{ports.exporter}"
        ep.enforcer = f"http://127.0.0.1:{ports.enforcer}"
        ep.allocator_http = f"http://127.0.0.1:{ports.allocator}"
        ep.allocator_socket = str(state / "allocator.sock")
        ep.prometheus = f"http://127.0.0.1:{ports.prometheus}"
        ep.alertmanager = f"http://127.0.0.1:{ports.alertmanager}"

    def _gpu_flags(self) -> list[str]:
        """The GPU backend flags the exporter and the allocator share (one sim state file)."""
        backend = self.options.gpu_backend or self.policy.gpu.backend
        topology = self.options.sim_topology or self.policy.gpu.sim_topology
        flags = ["--gpu-backend", backend, "--sim-state", self.endpoints.sim_state]
        return flags + (["--sim-topology", topology] if topology else [])

    def _start_monitoring(self, token: str, ports: ServicePorts) -> None:
        """One Prometheus and one Alertmanager, with rules and routes rendered from the policy."""
        ep = self.endpoints
        self._alertmanager, self._prometheus = start_monitoring(
            self.options.state_dir,
            self.policy,
            self.options.timings,
            ports=(ports.alertmanager, ports.prometheus),
            routes={"enforcer_url": ep.enforcer, "token_file": token},
            targets={
                "exporter_targets": (f"127.0.0.1:{ports.exporter}",),
                "allocator_targets": (f"127.0.0.1:{ports.allocator}",),
                "enforcer_targets": (f"127.0.0.1:{ports.enforcer}",),
            },
        )
        self.children += [self._alertmanager.child, self._prometheus.child]
        ep.alertmanager_http_config = str(self._alertmanager.admin_http_config)

    def _start_docker(self) -> None:
        ep = self.endpoints
        wanted = self.options.docker_host or os.environ.get("DOCKER_HOST")
        if wanted:
            if not docker_answers(wanted):
                raise StackError(f"no Docker engine answers at {wanted}")
            ep.docker_host = wanted
            return
        if docker_answers(LOCAL_DOCKER):
            ep.docker_host = LOCAL_DOCKER
            return
        if os.geteuid() != 0:
            raise StackError(
                "no Docker engine answers and starting one needs root; "
                "start dockerd or set DOCKER_HOST"
            )
        logger.info("no Docker engine answers; starting a private dockerd")
        self._dockerd = start_dockerd(self.options.state_dir / "docker")
        self.children.append(self._dockerd.child)
        ep.docker_host, ep.docker_private = self._dockerd.url, True
        import docker

        client = docker.DockerClient(base_url=ep.docker_host)
        try:
            ep.local_image = ensure_busybox_image(client)
        finally:
            client.close()

    def _start_gateway(self, common: list[str]) -> None:
        """The Docker API gateway in front of the dockerd in use, on a socket any user opens."""
        ep = self.endpoints
        if not ep.docker_host.startswith("unix://"):
            ep.gateway_note = f"not started: dockerd at {ep.docker_host} is not a Unix socket"
            logger.warning("gateway %s", ep.gateway_note)
            return
        state = self.options.state_dir
        try:
            state.chmod(state.stat().st_mode | 0o011)  # others traverse it to both sockets
        except PermissionError:
            logger.debug("state dir %s is not ours to open up; reported below", state)
        socket_path = state / "docker.sock"
        self._spawn(
            "gateway",
            _py(
                "gateway",
                *common,
                "--socket",
                str(socket_path),
                "--allocator-socket",
                ep.allocator_socket,
            ),
            lambda: docker_ping(socket_path),
        )
        ep.gateway_socket = str(socket_path)
        blocked = unreachable_folder(socket_path)
        if blocked is not None:
            ep.gateway_note = f"only for root and you: others cannot traverse {blocked}"
            logger.warning("gateway socket %s: %s", socket_path, ep.gateway_note)

    def _write_token(self) -> str:
        path = self.options.state_dir / "enforcer.token"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(32) + "\n")
        os.chmod(path, 0o600)
        return str(path)

    def _spawn(self, name: str, argv: list[str], ready: Callable[[], bool]) -> ChildProcess:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        log = self.options.state_dir / "logs" / f"{name}.log"
        child = ChildProcess(name, argv, log, env=env).start()
        self.children.append(child)
        child.wait_until(ready, 60, "healthy")
        return child

    def _exporter_backend(self) -> str:
        text = requests.get(f"{self.endpoints.exporter}/metrics", timeout=5).text
        for line in text.splitlines():
            if line.startswith("ds01_exporter_build_info{"):
                marker = 'backend="'
                start = line.find(marker) + len(marker)
                return line[start : line.find('"', start)]
        return "unknown"

    # -- reload ----------------------------------------------------------------------------------

    def reload_policy(self) -> bool:
        """SIGHUP: a valid policy file rewrites the alert rules and reaches every part (each
        service re-validates it on its own SIGHUP); a bad one changes nothing."""
        try:
            fresh = load_policy(self.options.policy_path)
        except PolicyError as exc:
            logger.error("policy reload refused, the last good policy stays: %s", exc)
            return False
        self.policy = fresh
        if self._prometheus is not None:
            rewrite_rule_files(self.options.state_dir / "prometheus", fresh, self.options.timings)
        for child in self.children:
            if child.name in RELOADED_ON_SIGHUP and child.process is not None and child.running():
                child.process.send_signal(signal.SIGHUP)
        logger.info("policy reloaded from %s; rules rewritten, services told", fresh.source)
        return True

    # -- run and stop --------------------------------------------------------------------------

    @property
    def alertmanager_auth(self) -> tuple[str, str] | None:
        """The Alertmanager admin's basic-auth credentials (None before it started)."""
        return self._alertmanager.auth if self._alertmanager else None

    def failed_children(self) -> list[ChildProcess]:
        return [child for child in self.children if not child.running()]

    def stop(self) -> None:
        """Reverse order: Prometheus first (no new alerts), dockerd last."""
        for child in reversed(self.children):
            try:
                child.stop()
            except Exception:
                logger.exception("could not stop %s", child.name)
        self.children.clear()
