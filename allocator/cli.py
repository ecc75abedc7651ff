"""`ds01 allocator`: serve the allocator on a Unix socket (and optionally TCP for admins)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from ds01.cliflags import add_common_flags, duration_arg, load_policy_for, split_listen
from ds01.dockerio import DockerLink, connect
from ds01.durations import format_duration
from ds01.gpu import open_backend
from ds01.logs import setup_logging
from ds01.policy import Policy
from ds01.policy_reload import PolicyReloader
from ds01.tokenfile import TokenFileError, load_token

from .decision_log import DecisionLogCorrupt, StateInUse
from .runtime import build_runtime
from .server import SocketInUse, refuse_live_socket
from .service import Settings
from .store_sqlite import StateUnopenable

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ds01 allocator",
        description="Hand out GPUs and MIG instances under quotas, with a fair wait queue.",
    )
    add_common_flags(parser, default_listen="off (admins only, needs --token-file)")
    parser.add_argument(
        "--socket",
        default=None,
        help="Unix socket to serve on, mode 0666 (default: the policy's "
        "services.allocator_socket, /run/ds01/allocator.sock)",
    )
    parser.add_argument(
        "--token-file",
        default=None,
        help="file holding the bearer token that TCP callers (admins) must send; "
        "required with --listen",
    )
    parser.add_argument(
        "--db",
        default=None,
        help="SQLite state file (default <state-dir>/allocator.sqlite)",
    )
    parser.add_argument(
        "--gpu-backend",
        choices=["auto", "nvml", "sim"],
        default=None,
        help="GPU inventory source (default: the policy's gpu.backend, auto)",
    )
    parser.add_argument("--sim-topology", default=None, help="sim topology YAML (sim backend)")
    parser.add_argument(
        "--sim-state",
        default=None,
        help="sim activity file (default <state-dir>/sim-gpu-state.json)",
    )
    parser.add_argument(
        "--audit-log",
        default=None,
        help="the enforcer's audit log, read for `container history` (default: the policy's "
        "services.audit_log, else <state-dir>/enforcer-audit.jsonl)",
    )
    parser.add_argument(
        "--history-log",
        default=None,
        help="where grants and waits are recorded (default <state-dir>/allocator-history.jsonl)",
    )
    parser.add_argument("--threads", type=int, default=64, help="HTTP worker threads (default 64)")
    parser.add_argument(
        "--tick",
        type=duration_arg,
        default=0.1,
        help="how often expiries are checked, e.g. 100ms (default 100ms)",
    )
    parser.add_argument(
        "--inventory-refresh",
        type=duration_arg,
        default=1.0,
        help="how long a GPU inventory reading is reused (default 1s)",
    )
    parser.add_argument(
        "--ticket-grace",
        type=duration_arg,
        default=10.0,
        help="a queued request nobody polls for this long leaves the queue (default 10s)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    policy = load_policy_for(parser, args)
    if args.threads < 1:
        parser.error("--threads: must be at least 1")
    listen = None
    token = None
    listen_text = args.listen or policy.services.allocator_listen
    if listen_text:
        try:
            listen = split_listen(listen_text)
        except ValueError as exc:
            parser.error(f"--listen: {exc}")
        if not args.token_file:
            parser.error("--listen needs --token-file: TCP callers are admins with a token")
    if args.token_file:
        try:
            token = load_token(args.token_file)
        except TokenFileError as exc:
            parser.error(f"--token-file: refusing to start: {exc}")
    state_dir = Path(args.state_dir or policy.services.state_dir)
    socket_path = (
        args.socket or os.environ.get("DS01_ALLOCATOR_SOCKET") or (policy.services.allocator_socket)
    )
    kind = args.gpu_backend or policy.gpu.backend
    try:
        backend = open_backend(
            kind,
            sim_topology=args.sim_topology or policy.gpu.sim_topology,
            sim_state=args.sim_state or state_dir / "sim-gpu-state.json",
        )
    except (OSError, ValueError) as exc:
        parser.error(f"--gpu-backend {kind}: {exc}")
    try:
        refuse_live_socket(Path(socket_path))
    except SocketInUse as exc:
        parser.error(f"--socket: refusing to start: {exc}")
    # Made on first use: while Docker is down the watcher keeps retrying, then reconciles.
    docker_client = DockerLink(lambda: connect(args.docker_host))
    try:
        runtime = build_runtime(
            policy,
            db_path=args.db or state_dir / "allocator.sqlite",
            socket_path=socket_path,
            backend=backend,
            docker_client=docker_client,
            listen=listen,
            token=token,
            threads=args.threads,
            tick=args.tick,
            settings=Settings(
                ticket_grace=args.ticket_grace, inventory_refresh=args.inventory_refresh
            ),
            audit_log=args.audit_log
            or policy.services.audit_log
            or state_dir / "enforcer-audit.jsonl",
            history_log=args.history_log or state_dir / "allocator-history.jsonl",
        )
    except TokenFileError as exc:
        parser.error(f"cluster.postgres_dsn_file: refusing to start: {exc}")
    except (DecisionLogCorrupt, StateInUse, StateUnopenable) as exc:
        parser.error(f"refusing to start: {exc}")

    def use_policy(fresh: Policy) -> None:
        runtime.allocator.policy = fresh

    PolicyReloader(
        policy, path=args.policy, apply=use_policy, registry=runtime.registry
    ).on_sighup()
    logger.info(
        "allocator serving socket=%s tcp=%s policy=%s backend=%s devices=%d gpu_wait=%s "
        "hold_after_stop=%s reservation_ttl=%s store=%s node=%s",
        socket_path,
        "{}:{}".format(*runtime.server.tcp_address) if runtime.server.tcp_address else "off",
        policy.source,
        backend.name,
        len(backend.devices()),
        format_duration(policy.gpu_wait),
        format_duration(policy.gpu_hold_after_stop),
        format_duration(policy.reservation_ttl),
        runtime.store.where,
        runtime.allocator.node,
    )

    def stop(signum: int, _frame: object) -> None:
        logger.info("signal %d: stopping", signum)
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if runtime.watcher is not None:
        runtime.watcher.start()
    runtime.ticker.start()
    try:
        runtime.server.run()
    finally:
        runtime.ticker.stop()
        if runtime.watcher is not None:
            runtime.watcher.stop()
        runtime.store.close()
        runtime.allocator.history.close()
        backend.close()
    logger.info("allocator stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
