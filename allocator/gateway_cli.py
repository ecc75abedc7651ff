"""`ds01 gateway`: serve the Docker API to every local user, as themselves, in front of dockerd."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence

from ds01.cliflags import duration_arg, load_policy_for
from ds01.logs import setup_logging
from ds01.policy import DEFAULT_POLICY_PATH
from ds01.policy_reload import PolicyReloader

from .client import SOCKET_ENV, AllocatorClient
from .gateway import GatewayServer, GatewaySettings
from .gateway_backends import AllocatorGrants

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ds01 gateway",
        description="Docker API gateway: identity per connection, GPUs from the allocator, "
        "ownership checks; forwards to dockerd's root-only socket.",
    )
    parser.add_argument(
        "--policy",
        default=os.environ.get("DS01_POLICY"),
        help=f"policy file (env DS01_POLICY; default {DEFAULT_POLICY_PATH})",
    )
    parser.add_argument(
        "--socket",
        default=None,
        help="socket to serve on, mode 0666 (default: the policy's gateway.socket, "
        "/run/ds01/docker.sock)",
    )
    parser.add_argument(
        "--docker-host",
        default=None,
        help="dockerd's own socket, unix:///path or /path (default: the policy's "
        "gateway.docker_socket, /run/ds01/dockerd.sock)",
    )
    parser.add_argument(
        "--allocator-socket",
        default=os.environ.get(SOCKET_ENV),
        help=f"the allocator's socket (env {SOCKET_ENV}; default: the policy's "
        "services.allocator_socket)",
    )
    parser.add_argument(
        "--idle-timeout",
        type=duration_arg,
        default=300.0,
        help="close a kept-alive connection idle this long (default 5m)",
    )
    parser.add_argument(
        "--read-timeout",
        type=duration_arg,
        default=60.0,
        help="give up on a request head or body that stops arriving (default 60s)",
    )
    parser.add_argument(
        "--max-connections", type=int, default=1024, help="open connections (default 1024)"
    )
    parser.add_argument(
        "--log-level",
        default=os.environ.get("DS01_LOG_LEVEL", "INFO"),
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log verbosity (default INFO)",
    )
    return parser


def unix_path(url: str) -> str:
    """A socket path from `unix:///path` or `/path`; anything else is refused."""
    if url.startswith("unix://"):
        return url[len("unix://") :]
    if url.startswith("/"):
        return url
    raise ValueError(f"the gateway talks to dockerd over a Unix socket, got {url!r}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    policy = load_policy_for(parser, args)
    if args.max_connections < 1:
        parser.error("--max-connections: must be at least 1")
    try:
        docker_socket = unix_path(args.docker_host or policy.gateway.docker_socket)
    except ValueError as exc:
        parser.error(f"--docker-host: {exc}")
    socket_path = args.socket or policy.gateway.socket
    if os.path.realpath(socket_path) == os.path.realpath(docker_socket):
        parser.error("--socket: must differ from dockerd's own socket")
    allocator_socket = args.allocator_socket or policy.services.allocator_socket
    grants = AllocatorGrants(AllocatorClient(allocator_socket))
    settings = GatewaySettings(
        idle_timeout=args.idle_timeout,
        read_timeout=args.read_timeout,
        max_connections=args.max_connections,
    )
    try:
        server = GatewayServer(
            socket_path=socket_path,
            docker_socket=docker_socket,
            policy=policy,
            grants=grants,
            settings=settings,
        )
    except OSError as exc:
        parser.error(f"--socket {socket_path}: {exc}")
    logger.info(
        "gateway serving socket=%s docker=%s allocator=%s policy=%s admin_groups=%s "
        "list_all_containers=%s",
        socket_path,
        docker_socket,
        allocator_socket,
        policy.source,
        ",".join(sorted(policy.gateway.admin_groups)),
        policy.gateway.list_all_containers,
    )

    def stop(signum: int, _frame: object) -> None:
        logger.info("signal %d: stopping", signum)
        server.close()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    PolicyReloader(policy, path=args.policy, apply=server.use_policy).on_sighup()
    server.serve_forever()
    server.close()
    logger.info("gateway stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
