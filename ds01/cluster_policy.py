"""The policy's `cluster:` section: which store holds allocations and which GPU nodes exist.

One node needs none of it (SQLite, no node list). Several nodes share one PostgreSQL store so
quotas count a user's devices everywhere, and one Prometheus/Alertmanager pair is generated
from the node list. Parse errors are `ClusterError(key, reason)`; `policy.py` names the key.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

STORES = ("sqlite", "postgres")
# Prometheus label values are free text, but a node name also becomes part of receiver names,
# file names and a Docker label: keep it to what a host name may be.
_NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_HOST_PORT = re.compile(r"^[A-Za-z0-9.\[\]:-]+:\d{1,5}$")
_KEYS = ("store", "postgres_dsn", "postgres_dsn_file", "nodes")
_NODE_KEYS = ("name", "exporter", "enforcer", "allocator", "token_file")


class ClusterError(ValueError):
    def __init__(self, key: str, reason: str) -> None:
        self.key, self.reason = key, reason
        super().__init__(f"{key}: {reason}")


@dataclass(frozen=True)
class ClusterNode:
    """One GPU node as the central Prometheus and Alertmanager reach it."""

    name: str
    exporter: str  # host:port Prometheus scrapes
    enforcer: str  # base URL Alertmanager posts this node's alerts to
    allocator: str | None = None  # host:port of the allocator's TCP metrics, if any
    # The bearer token file Alertmanager sends to this node's enforcer (absolute, on the
    # Alertmanager host); None = the shared `services.token_file`.
    token_file: str | None = None


@dataclass(frozen=True)
class Cluster:
    """Empty by default: one node, SQLite, configs from `services` alone."""

    store: str = "sqlite"
    postgres_dsn: str = ""  # inline DSN (tests, demos); prefer the file for a password
    postgres_dsn_file: str = ""
    nodes: tuple[ClusterNode, ...] = ()

    def node(self, name: str) -> ClusterNode | None:
        return next((n for n in self.nodes if n.name == name), None)

    @property
    def node_names(self) -> tuple[str, ...]:
        return tuple(n.name for n in self.nodes)


def effective_node(configured: str) -> str:
    """This host's node name: `services.node`, else the short host name (the documented default)."""
    return configured or socket.gethostname().split(".")[0] or "localhost"


def valid_node_name(name: str) -> bool:
    return bool(_NODE_NAME.match(name))


def parse_cluster(value: Any, key: str = "cluster") -> Cluster:
    """The section as frozen records; ClusterError names the key and the reason."""
    raw = _mapping(value, key, _KEYS)
    store = raw.get("store", "sqlite")
    if store not in STORES:
        raise ClusterError(f"{key}.store", f"must be one of {', '.join(STORES)}, got {store!r}")
    dsn = _text(raw.get("postgres_dsn", ""), f"{key}.postgres_dsn", empty_ok=True)
    dsn_file = _text(raw.get("postgres_dsn_file", ""), f"{key}.postgres_dsn_file", empty_ok=True)
    if dsn and dsn_file:
        raise ClusterError(
            f"{key}.postgres_dsn", "give postgres_dsn or postgres_dsn_file, not both"
        )
    if dsn_file and not dsn_file.startswith("/"):
        raise ClusterError(
            f"{key}.postgres_dsn_file", f"must be an absolute path, got {dsn_file!r}"
        )
    if store == "postgres" and not (dsn or dsn_file):
        raise ClusterError(f"{key}.store", "postgres needs postgres_dsn or postgres_dsn_file")
    raw_nodes = raw.get("nodes", [])
    if not isinstance(raw_nodes, list):
        raise ClusterError(f"{key}.nodes", f"must be a list, got {type(raw_nodes).__name__}")
    nodes = tuple(_node(item, f"{key}.nodes[{i}]") for i, item in enumerate(raw_nodes))
    names = [n.name for n in nodes]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate is not None:
        raise ClusterError(f"{key}.nodes", f"node {duplicate!r} is listed twice")
    return Cluster(store=store, postgres_dsn=dsn, postgres_dsn_file=dsn_file, nodes=nodes)


def _node(value: Any, key: str) -> ClusterNode:
    raw = _mapping(value, key, _NODE_KEYS)
    for required in ("name", "exporter", "enforcer"):
        if required not in raw:
            raise ClusterError(f"{key}.{required}", "is required")
    name = _text(raw["name"], f"{key}.name")
    if not valid_node_name(name):
        raise ClusterError(f"{key}.name", f"not a host-like name: {name!r}")
    exporter = _host_port(raw["exporter"], f"{key}.exporter")
    enforcer = _text(raw["enforcer"], f"{key}.enforcer")
    parts = urlsplit(enforcer)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ClusterError(f"{key}.enforcer", f"must be an http(s) URL, got {enforcer!r}")
    allocator = raw.get("allocator")
    if allocator is not None:
        allocator = _host_port(allocator, f"{key}.allocator")
    token_file = raw.get("token_file")
    if token_file is not None:
        token_file = _text(token_file, f"{key}.token_file")
        if not token_file.startswith("/"):
            raise ClusterError(f"{key}.token_file", f"must be an absolute path, got {token_file!r}")
    return ClusterNode(name, exporter, enforcer.rstrip("/"), allocator, token_file)


def _host_port(value: Any, key: str) -> str:
    text = _text(value, key)
    if not _HOST_PORT.match(text):
        raise ClusterError(key, f"must be HOST:PORT, got {text!r}")
    return text


def _text(value: Any, key: str, *, empty_ok: bool = False) -> str:
    if not isinstance(value, str) or (not value and not empty_ok):
        raise ClusterError(key, f"must be a non-empty string, got {value!r}")
    return value


def _mapping(value: Any, key: str, allowed: tuple[str, ...]) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ClusterError(key, f"must be a mapping, got {type(value).__name__}")
    unknown = sorted(str(k) for k in value if k not in allowed)
    if unknown:
        raise ClusterError(f"{key}.{unknown[0]}", f"unknown key (allowed: {', '.join(allowed)})")
    return value
