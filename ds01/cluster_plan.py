"""What `ds01 up --nodes N` runs where: node names, ports, folders and each node's own policy.

Pure: the documents are rendered here from the admin's policy and handed to the supervisor
(ds01/cluster_up.py), which writes them and starts the parts. Each node's policy is the
admin's, plus its `services` (node name, ports, sockets, state folder), its sim topology (UUIDs
of its own) and the shared `cluster:` section every node and the central Prometheus read.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .supervisor import ServicePorts

NODE_PREFIX = "node-"
MAX_NODES = 16  # one machine pretends to be a cluster; past this it only thrashes
SOCKET_PATH_MAX = 100  # sun_path holds 108 bytes; dockerd's containerd adds ".ttrpc" and more
# The longest socket a node's dockerd makes under its folder (containerd's, in the exec-root).
_LONGEST_SOCKET = "docker/exec/containerd/containerd.sock.ttrpc"


@dataclass(frozen=True)
class NodePlan:
    """One pretend GPU host on this machine: its name, folder and TCP ports."""

    name: str
    root: Path  # everything of the node: dockerd, sockets, state, logs, its policy
    ports: ServicePorts  # prometheus/alertmanager: the central pair, the same on every node

    @property
    def docker_root(self) -> Path:
        return self.root / "docker"

    @property
    def dockerd_socket(self) -> Path:
        return self.docker_root / "docker.sock"

    @property
    def gateway_socket(self) -> Path:
        return self.root / "docker.sock"

    @property
    def allocator_socket(self) -> Path:
        return self.root / "allocator.sock"

    @property
    def policy_file(self) -> Path:
        return self.root / "ds01.yaml"

    @property
    def topology_file(self) -> Path:
        return self.root / "sim-topology.yaml"

    @property
    def token_file(self) -> Path:
        """This node's enforcer token: it opens this node's enforcer and no other."""
        return self.root / "enforcer.token"

    @property
    def audit_log(self) -> Path:
        return self.root / "enforcer" / "enforcer-audit.jsonl"


def plan_nodes(
    count: int,
    state_dir: Path,
    *,
    prometheus_port: int,
    alertmanager_port: int,
    free_port: Callable[[], int],
) -> tuple[NodePlan, ...]:
    """`count` nodes named node-1…node-N under `state_dir`, each with its own service ports."""
    if not 1 <= count <= MAX_NODES:
        raise ValueError(f"--nodes: must be 1 to {MAX_NODES}, got {count}")
    return tuple(
        NodePlan(
            name=f"{NODE_PREFIX}{i}",
            root=state_dir / f"{NODE_PREFIX}{i}",
            ports=ServicePorts(
                exporter=free_port(),
                enforcer=free_port(),
                allocator=free_port(),
                prometheus=prometheus_port,
                alertmanager=alertmanager_port,
            ),
        )
        for i in range(1, count + 1)
    )


def socket_path_problem(state_dir: Path, count: int) -> str | None:
    """Why `state_dir` cannot hold `count` nodes' sockets (None: it can): dockerd fails late
    and obscurely on a Unix socket path that is too long."""
    longest = Path(state_dir).absolute() / f"{NODE_PREFIX}{count}" / _LONGEST_SOCKET
    if len(str(longest)) <= SOCKET_PATH_MAX:
        return None
    return (
        f"--state-dir {state_dir} is too long for the nodes' Unix sockets ({longest} would be "
        f"{len(str(longest))} characters, at most {SOCKET_PATH_MAX}); use a shorter folder"
    )


def cluster_section(nodes: tuple[NodePlan, ...], dsn_file: Path) -> dict[str, Any]:
    """The policy's `cluster:` for these nodes: PostgreSQL through a 0600 DSN file."""
    return {
        "store": "postgres",
        "postgres_dsn_file": str(dsn_file),
        "nodes": [
            {
                "name": node.name,
                "exporter": f"127.0.0.1:{node.ports.exporter}",
                "enforcer": f"http://127.0.0.1:{node.ports.enforcer}",
                "allocator": f"127.0.0.1:{node.ports.allocator}",
                "token_file": str(node.token_file),
            }
            for node in nodes
        ],
    }


def cluster_policy(base: Mapping[str, Any], cluster: Mapping[str, Any]) -> dict[str, Any]:
    """The admin's policy with the `cluster:` section: what the central Prometheus renders."""
    document = copy.deepcopy(dict(base))
    document["cluster"] = copy.deepcopy(dict(cluster))
    return document


def node_policy(
    base: Mapping[str, Any],
    node: NodePlan,
    cluster: Mapping[str, Any],
    *,
    alertmanager_password_file: Path,
) -> dict[str, Any]:
    """One node's policy: the admin's limits, this node's services, its sim GPUs, the cluster."""
    document = cluster_policy(base, cluster)
    ports = node.ports
    document["services"] = {
        **dict(base.get("services") or {}),
        "node": node.name,
        "state_dir": str(node.root),
        "exporter_listen": f"127.0.0.1:{ports.exporter}",
        "exporter_url": f"http://127.0.0.1:{ports.exporter}",
        "enforcer_listen": f"127.0.0.1:{ports.enforcer}",
        "allocator_listen": f"127.0.0.1:{ports.allocator}",
        "allocator_socket": str(node.allocator_socket),
        "prometheus_url": f"http://127.0.0.1:{ports.prometheus}",
        "alertmanager_url": f"http://127.0.0.1:{ports.alertmanager}",
        "token_file": str(node.token_file),
        "audit_log": str(node.audit_log),
        "alertmanager_password_file": str(alertmanager_password_file),
    }
    document["gateway"] = {
        **dict(base.get("gateway") or {}),
        "socket": str(node.gateway_socket),
        "docker_socket": str(node.dockerd_socket),
    }
    document["gpu"] = {"backend": "sim", "sim_topology": str(node.topology_file)}
    return document


def shared_device_uuids(devices_by_node: Mapping[str, Iterable[str]]) -> list[str]:
    """Device UUIDs that more than one node would have (a topology with fixed `uuid:` entries):
    one store cannot tell such devices apart."""
    seen: dict[str, str] = {}
    shared: set[str] = set()
    for node, uuids in devices_by_node.items():
        for device in uuids:
            if seen.setdefault(device, node) != node:
                shared.add(device)
    return sorted(shared)
