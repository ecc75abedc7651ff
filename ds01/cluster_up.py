"""`ds01 up --nodes N`: N pretend GPU hosts on one machine, sharing one PostgreSQL quota store,
one Prometheus and one Alertmanager — the multi-node layout of docs/cluster.md, for the demo and
for tests.

Each node gets a private dockerd (own data-root, exec-root, pidfile, socket; no bridge, no
iptables, so nodes never clash), its own exporter/allocator/gateway/enforcer under its own
rendered policy (ds01/cluster_plan.py) and a simulated GPU whose UUIDs are its own.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .cluster_plan import (
    NodePlan,
    cluster_policy,
    cluster_section,
    node_policy,
    plan_nodes,
    shared_device_uuids,
)
from .gpu.sim import topology_devices, topology_for_node
from .policy import PolicyError, load_policy, parse_policy
from .postgres_server import PostgresServer, start_postgres
from .stack import (
    Alertmanager,
    ChildProcess,
    Dockerd,
    Prometheus,
    StackError,
    ensure_busybox_image,
    free_port,
    start_dockerd,
)
from .supervisor import (
    RELOADED_ON_SIGHUP,
    Endpoints,
    StackOptions,
    StackSupervisor,
    Timings,
    rewrite_rule_files,
    start_monitoring,
)
from .webauth import write_private

logger = logging.getLogger(__name__)

DATABASE = "ds01"


@dataclass(frozen=True)
class ClusterOptions:
    policy_path: Path  # the admin's policy; every node's own is rendered from it
    state_dir: Path
    nodes: int
    timings: Timings = field(default_factory=Timings)
    log_level: str = "INFO"


@dataclass
class ClusterEndpoints:
    """Where the shared parts answer and, per node, everything `Endpoints` says."""

    nodes: dict[str, Endpoints] = field(default_factory=dict)
    node_policies: dict[str, str] = field(default_factory=dict)
    cluster_policy: str = ""
    prometheus: str = ""
    alertmanager: str = ""
    alertmanager_http_config: str = ""
    postgres: str = ""  # host:port (the password is in the DSN file, never printed)
    dsn_file: str = ""


class ClusterSupervisor:
    """Start PostgreSQL, every node's dockerd and services, then Prometheus and Alertmanager;
    stop all of it in reverse order."""

    def __init__(self, options: ClusterOptions) -> None:
        self.options = options
        self.base: dict[str, Any] = _read_policy_document(options.policy_path)
        self.endpoints = ClusterEndpoints()
        self.plans: tuple[NodePlan, ...] = ()
        self.postgres: PostgresServer | None = None
        self.dockerds: dict[str, Dockerd] = {}
        self.node_supervisors: dict[str, StackSupervisor] = {}
        self._prometheus: Prometheus | None = None
        self._alertmanager: Alertmanager | None = None

    @property
    def children(self) -> list[ChildProcess]:
        """Every supervised process, for the keeper (a part that exits is started again)."""
        found: list[ChildProcess] = []
        if self.postgres is not None and self.postgres.process is not None:
            found.append(self.postgres.process)
        found += [engine.child for engine in self.dockerds.values()]
        for node in self.node_supervisors.values():
            found += node.children
        found += [s.child for s in (self._alertmanager, self._prometheus) if s is not None]
        return found

    def node(self, name: str) -> StackSupervisor:
        return self.node_supervisors[name]

    # -- start ---------------------------------------------------------------------------------

    def start(self) -> ClusterEndpoints:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self.endpoints

    def _start(self) -> None:
        state = self.options.state_dir
        (state / "logs").mkdir(parents=True, exist_ok=True)
        os.chmod(state, os.stat(state).st_mode | 0o011)  # users reach the gateway sockets
        ep = self.endpoints
        prometheus_port, alertmanager_port = free_port(), free_port()
        ep.prometheus = f"http://127.0.0.1:{prometheus_port}"
        ep.alertmanager = f"http://127.0.0.1:{alertmanager_port}"
        self.plans = plan_nodes(
            self.options.nodes,
            state,
            prometheus_port=prometheus_port,
            alertmanager_port=alertmanager_port,
            free_port=free_port,
        )
        self._write_topologies()  # refused before anything starts
        dsn_file = self._start_postgres()
        section = cluster_section(self.plans, dsn_file)
        shared = cluster_policy(self.base, section)
        ep.cluster_policy = str(self._write_policy(state / "ds01-cluster.yaml", shared))
        for plan in self.plans:
            self._start_node(plan, section)
        self._start_monitoring(load_policy(ep.cluster_policy))

    def _start_postgres(self) -> Path:
        """One PostgreSQL with its own data folder; its DSN (with the password) in a 0600 file."""
        state = self.options.state_dir
        self.postgres = start_postgres(state / "postgres")
        dsn = self.postgres.create_database(DATABASE)
        dsn_file = write_private(state / "postgres.dsn", dsn + "\n")
        self.endpoints.postgres = f"{self.postgres.host}:{self.postgres.port}"
        self.endpoints.dsn_file = str(dsn_file)
        return dsn_file

    def _write_policy(self, path: Path, document: dict[str, Any]) -> Path:
        parse_policy(document, str(path))  # a render that does not validate never reaches a part
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        return path

    def _start_node(self, plan: NodePlan, section: dict[str, Any]) -> None:
        """A private dockerd with the busybox image, then the node's four services."""
        plan.root.mkdir(parents=True, exist_ok=True)
        os.chmod(plan.root, 0o755)
        # The node's own enforcer token: Alertmanager sends each node's alerts with that
        # node's token (cluster.nodes[].token_file), so one leaked token opens one enforcer.
        write_private(plan.token_file, secrets.token_urlsafe(32) + "\n")
        document = node_policy(
            self.base, plan, section, alertmanager_password_file=self._password_file()
        )
        self._write_policy(plan.policy_file, document)
        self.endpoints.node_policies[plan.name] = str(plan.policy_file)
        engine = start_dockerd(plan.docker_root)
        self.dockerds[plan.name] = engine
        import docker

        client = docker.DockerClient(base_url=engine.url)
        try:
            image = ensure_busybox_image(client)
        finally:
            client.close()
        supervisor = StackSupervisor(
            StackOptions(
                plan.policy_file,
                plan.root,
                self.options.timings,
                "sim",
                str(plan.topology_file),
                engine.url,
                self.options.log_level,
                ports=plan.ports,
                monitoring=False,
                token_file=plan.token_file,
            )
        )
        self.node_supervisors[plan.name] = supervisor
        endpoints = supervisor.start()
        endpoints.docker_private, endpoints.local_image = True, image
        self.endpoints.nodes[plan.name] = endpoints

    def _write_topologies(self) -> None:
        """Each node's sim topology (UUIDs of its own); fixed UUIDs shared by nodes are refused."""
        devices = {}
        for plan in self.plans:
            text = topology_for_node(plan.name, self._base_topology())
            plan.root.mkdir(parents=True, exist_ok=True)
            plan.topology_file.write_text(text)
            devices[plan.name] = [d.device_uuid for d in topology_devices(yaml.safe_load(text))]
        shared = shared_device_uuids(devices)
        if shared:
            raise StackError(
                f"sim topology {self._base_topology()} gives every node the same devices "
                f"({', '.join(shared[:3])}…): remove its uuid: entries, the nodes get their own"
            )

    def _base_topology(self) -> str | None:
        gpu = self.base.get("gpu") or {}
        return gpu.get("sim_topology") if isinstance(gpu, dict) else None

    def _start_monitoring(self, policy: Any) -> None:
        """One Alertmanager routing each node's alerts to that node's enforcer, one Prometheus
        scraping every node (targets labelled with their node), both rendered from the policy."""
        ep, ports = self.endpoints, self.plans[0].ports
        self._alertmanager, self._prometheus = start_monitoring(
            self.options.state_dir,
            policy,
            self.options.timings,
            ports=(ports.alertmanager, ports.prometheus),
        )
        ep.alertmanager_http_config = str(self._alertmanager.admin_http_config)
        for node in ep.nodes.values():
            node.alertmanager_http_config = ep.alertmanager_http_config

    # -- reload, stop ----------------------------------------------------------------------------

    def reload_policy(self) -> bool:
        """SIGHUP: re-render every node's policy from the admin's file; a bad one changes
        nothing (the last good policies stay and the parts are not told)."""
        try:
            base = _read_policy_document(self.options.policy_path)
            section = cluster_section(self.plans, Path(self.endpoints.dsn_file))
            password = self._password_file()
            documents = {
                plan: node_policy(base, plan, section, alertmanager_password_file=password)
                for plan in self.plans
            }
            shared = cluster_policy(base, section)
            for document in (*documents.values(), shared):
                parse_policy(document, str(self.options.policy_path))
        except PolicyError as exc:
            logger.error("policy reload refused, the last good policy stays: %s", exc)
            return False
        self.base = base
        for plan, document in documents.items():
            self._write_policy(plan.policy_file, document)
        self._write_policy(Path(self.endpoints.cluster_policy), shared)
        rewrite_rule_files(
            self.options.state_dir / "prometheus",
            load_policy(self.endpoints.cluster_policy),
            self.options.timings,
        )
        for child in self.children:
            if child.name in RELOADED_ON_SIGHUP and child.running():
                child.signal(signal.SIGHUP)
        logger.info("policy reloaded from %s on %d nodes", self.options.policy_path, len(documents))
        return True

    def _password_file(self) -> Path:
        return self.options.state_dir / "alertmanager" / "prometheus.password"

    def stop(self) -> None:
        """Prometheus and Alertmanager first (no new alerts), then each node's services and its
        dockerd, PostgreSQL last (allocators close their connections before it goes)."""
        for server in (self._prometheus, self._alertmanager):
            if server is not None:
                _quietly(server.stop, server.child.name)
        self._prometheus = self._alertmanager = None
        for name in reversed(list(self.node_supervisors)):
            _quietly(self.node_supervisors[name].stop, f"{name} services")
        for name in reversed(list(self.dockerds)):
            _quietly(self.dockerds[name].stop, f"{name} dockerd")
        self.dockerds.clear()
        if self.postgres is not None:
            _quietly(self.postgres.close, "postgres")


def _quietly(action: Any, what: str) -> None:
    try:
        action()
    except Exception:
        logger.exception("could not stop %s", what)


def _read_policy_document(path: Path) -> dict[str, Any]:
    """The admin's policy as data (validated first, so errors name the admin's file)."""
    load_policy(path)
    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise PolicyError(str(path), "", "the policy must be a mapping")
    if data.get("cluster"):
        raise PolicyError(
            str(path), "cluster", "ds01 up --nodes writes its own cluster section; remove it"
        )
    return data


def cluster_banner(ep: ClusterEndpoints, policy_file: Path, demo: bool) -> str:
    """Per node where to look and the DOCKER_HOST to use; the shared parts once."""
    lines = ["", f"DS01 GPU lifecycle cluster is up: {len(ep.nodes)} nodes on this machine.", ""]
    shared = [
        ("policy", str(policy_file) + ("  [demo timings]" if demo else "")),
        ("cluster policy", ep.cluster_policy + "   (the cluster: section every node reads)"),
        ("PostgreSQL", f"{ep.postgres}   (quota store; DSN in {ep.dsn_file}, mode 0600)"),
        ("Prometheus", f"{ep.prometheus}/alerts   (scrapes every node; series carry node=…)"),
        (
            "Alertmanager",
            f"{ep.alertmanager}   (basic auth: amtool --http.config.file="
            f"{ep.alertmanager_http_config} --alertmanager.url={ep.alertmanager} …)",
        ),
    ]
    width = max(len(k) for k, _ in shared)
    lines += [f"  {k.ljust(width)}  {v}" for k, v in shared]
    for name, node in ep.nodes.items():
        rows = [
            ("gateway", f"{node.gateway_host}   export DOCKER_HOST={node.gateway_host}"),
            ("dockerd", f"{node.docker_host} (private, root only)"),
            ("policy", ep.node_policies.get(name, "")),
            ("exporter", f"{node.exporter}/metrics   {node.exporter}/api/state"),
            ("allocator", f"unix://{node.allocator_socket}   {node.allocator_http}/metrics"),
            ("enforcer", f"{node.enforcer}/metrics   audit log {node.audit_log}"),
            ("sim GPUs", f"{node.sim_state}   (ds01 sim-gpu --state-file …)"),
        ]
        lines += ["", f"  {name}:"]
        lines += [f"    {k.ljust(width)}  {v}" for k, v in rows]
    first = next(iter(ep.nodes.values()), None)
    env_hint = f". {Path(first.gateway_socket).parent / 'env.sh'}" if first else ""
    lines += [
        "",
        "Try next (in another shell):",
        f"  {env_hint}   # node-1's DOCKER_HOST, PATH; each node has its own env.sh",
        "  container deploy mine --gpus 1 --image ds01/busybox --network none --command 'sleep 1h'",
        "  gpu-status                       # the GPUs of every node",
        "  A student's quota counts devices on every node: a third GPU anywhere is refused.",
        "",
        "Ctrl-C stops everything.",
    ]
    return "\n".join(lines)
