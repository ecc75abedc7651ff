"""The `ds01 up --nodes N` command: check its flags, start the cluster, print where to look,
keep it running until Ctrl-C (ds01/cluster_up.py does the starting and stopping)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from .cluster_plan import MAX_NODES, socket_path_problem
from .cluster_up import ClusterOptions, ClusterSupervisor, cluster_banner
from .policy import PolicyError
from .stack import StackError
from .supervisor import Timings


def check_cluster_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse what cannot mean anything with N pretend hosts on one machine (parser.error)."""
    if args.nodes > MAX_NODES:
        parser.error(f"--nodes: at most {MAX_NODES} on one machine, got {args.nodes}")
    if args.gpu_backend not in (None, "sim"):
        parser.error(
            "--nodes: every pretend node has simulated GPUs (one machine's real GPUs cannot be "
            f"split between nodes); drop --gpu-backend {args.gpu_backend}"
        )
    if args.docker_host:
        parser.error("--nodes: each node starts its own private dockerd; drop --docker-host")
    problem = socket_path_problem(Path(args.state_dir), args.nodes)
    if problem:
        parser.error(f"--nodes: {problem}")
    if os.geteuid() != 0:
        parser.error("--nodes: starting private dockerds needs root")


def run_cluster(args: argparse.Namespace, policy_file: Path, timings: Timings) -> int:
    """Start N nodes, print the banner (and each node's env.sh), serve until Ctrl-C."""
    from .up import serve, signal_events, start_demo_containers, write_user_env

    state_dir = Path(args.state_dir)
    stop, reload = signal_events()
    options = ClusterOptions(policy_file, state_dir, args.nodes, timings, args.log_level)
    try:
        supervisor = ClusterSupervisor(options)
    except PolicyError as exc:
        print(f"ds01 up: {exc}", file=sys.stderr)
        return 1
    try:
        endpoints = supervisor.start()
        for node in endpoints.nodes.values():
            write_user_env(node, Path(node.gateway_socket).parent)
        print(cluster_banner(endpoints, policy_file, args.demo), flush=True)
        if args.demo:
            first = next(iter(endpoints.nodes.values()))
            start_demo_containers(first, state_dir / "logs" / "demo.log")
        serve(supervisor, stop, reload)
        return 0
    except (StackError, PolicyError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or ""
        print(f"ds01 up: {exc}\n{detail}", file=sys.stderr)
        return 1
    finally:
        supervisor.stop()
