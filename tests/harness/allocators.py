"""Allocators as separate processes (`ds01 allocator`), one per simulated node, for the
cluster tests and bench/allocator_cluster.py: real processes, so nodes share nothing but the
store. Each node gets its own folder, socket, sim topology (its own device UUIDs) and policy."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from allocator.client import AllocatorClient
from ds01.gpu.sim import topology_for_node
from ds01.stack import ChildProcess


@dataclass
class AllocatorNode:
    node: str
    process: ChildProcess
    client: AllocatorClient

    def stop(self) -> None:
        self.process.stop()


def start_allocator_node(
    folder: Path,
    node: str,
    *,
    topology: Path | None,
    policy: dict[str, Any],
    dsn: str | None,
    timeout: float = 60.0,
) -> AllocatorNode:
    """`ds01 allocator` for `node` on PostgreSQL `dsn` (SQLite in `folder` when None)."""
    folder.mkdir(parents=True, exist_ok=True)
    sim = folder / "topology.yaml"
    sim.write_text(topology_for_node(node, topology))
    data = dict(policy, services={"node": node})
    if dsn is not None:
        data["cluster"] = {"store": "postgres", "postgres_dsn": dsn}
    (folder / "ds01.yaml").write_text(yaml.safe_dump(data))
    argv = [
        sys.executable, "-m", "ds01.cli", "allocator", "--policy", str(folder / "ds01.yaml"),
        "--state-dir", str(folder), "--socket", str(folder / "s.sock"), "--gpu-backend", "sim",
        "--sim-topology", str(sim), "--docker-host", "unix:///nonexistent.sock",
        "--log-level", "WARNING",
    ]  # fmt: skip
    process = ChildProcess(f"allocator-{node}", argv, folder / "allocator.log").start()
    client = AllocatorClient(str(folder / "s.sock"))
    process.wait_until(lambda: client.call("GET", "/healthz")[0] == 200, timeout, "serving")
    return AllocatorNode(node, process, client)
