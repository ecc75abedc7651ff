"""`ds01 enforcer`: wire the journal, worker and webhook app together and serve with waitress."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from ds01.cliflags import add_common_flags, duration_arg, load_policy_for, split_listen
from ds01.cluster_policy import valid_node_name
from ds01.durations import format_duration
from ds01.logs import setup_logging
from ds01.policy_reload import PolicyReloader

from .app import DEFAULT_MAX_BODY
from .auth import TokenFileError, load_token
from .service import HTTP_THREADS, Enforcer, EnforcerConfig
from .worker import WorkerSettings

logger = logging.getLogger(__name__)

DEFAULT_LISTEN = "127.0.0.1:9102"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ds01 enforcer",
        description="Receive Alertmanager webhooks: warn owners (/notify) and stop containers "
        "(/alerts) after re-verifying every alert against Docker and Prometheus.",
    )
    add_common_flags(parser, default_listen=DEFAULT_LISTEN)
    parser.add_argument(
        "--token-file",
        help="file holding the bearer token Alertmanager sends; must not be readable by group "
        "or others (default: the policy's services.token_file, /etc/ds01/enforcer.token)",
    )
    parser.add_argument(
        "--prometheus-url",
        help="Prometheus to re-verify deadlines with (default: the policy's "
        "services.prometheus_url, http://127.0.0.1:9090)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="decide and record everything, but never stop or remove a container",
    )
    parser.add_argument(
        "--audit-log", help="JSON-lines audit log (default <state-dir>/enforcer-audit.jsonl)"
    )
    parser.add_argument(
        "--journal", help="SQLite journal of pending actions (default <state-dir>/enforcer.db)"
    )
    parser.add_argument(
        "--notice-path",
        help="file inside the container that warnings are appended to (default: the policy's "
        "services.notice_path, /workspace/.ds01-alerts)",
    )
    parser.add_argument(
        "--node",
        help="this node's name: only alerts labelled with it (or, on a single host without a "
        "cluster node list, with no node label) are acted on (default: the policy's "
        "services.node, else the short host name)",
    )
    parser.add_argument(
        "--max-body",
        type=_positive_int,
        default=DEFAULT_MAX_BODY,
        help=f"largest webhook body accepted, in bytes; larger ones get 413 "
        f"(default {DEFAULT_MAX_BODY})",
    )
    parser.add_argument(
        "--workers",
        type=_positive_int,
        default=4,
        help="worker threads acting on the journal, never two on one container (default 4)",
    )
    parser.add_argument(
        "--threads",
        type=_positive_int,
        default=HTTP_THREADS,
        help=f"HTTP server threads (default {HTTP_THREADS}); each webhook waits in one for "
        "the journal's group commit, so more threads mean fewer fsyncs per burst",
    )
    parser.add_argument(
        "--action-delay",
        type=duration_arg,
        default=0.0,
        help="testing/ops knob: wait this long between taking a journaled job and acting on it "
        "(default 0s)",
    )
    parser.add_argument(
        "--retry-initial",
        type=duration_arg,
        default=1.0,
        help="first retry delay when Docker or Prometheus is unreachable; doubles each time "
        "(default 1s)",
    )
    parser.add_argument(
        "--retry-max", type=duration_arg, default=30.0, help="longest retry delay (default 30s)"
    )
    parser.add_argument(
        "--poll-interval",
        type=duration_arg,
        default=1.0,
        help="how often an idle worker looks at the journal (default 1s)",
    )
    parser.add_argument(
        "--health-ttl",
        type=duration_arg,
        default=1.0,
        help="how long a Docker/Prometheus reachability check is reused (default 1s)",
    )
    parser.add_argument(
        "--journal-retention",
        type=duration_arg,
        default=7 * 86400.0,
        help="how long decided alerts are kept in the journal (default 7d)",
    )
    parser.add_argument(
        "--watch-interval",
        type=duration_arg,
        default=15.0,
        help="how often a stopped container is looked at again while the exporter still "
        "reports it, so a quick restart is stopped again; use the rule evaluation interval "
        "(default 15s)",
    )
    parser.add_argument(
        "--stuck-after",
        type=duration_arg,
        default=600.0,
        help="a job in flight longer than this makes /healthz answer 503 (default 10m)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.node and not valid_node_name(args.node):
        parser.error(f"--node: not a host-like name: {args.node!r}")
    setup_logging(args.log_level)
    # "Task queue depth is N" is normal during a webhook burst, not worth a warning line each
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    policy = load_policy_for(parser, args)
    services = policy.services
    state_dir = Path(args.state_dir or services.state_dir)
    try:
        host, port = split_listen(args.listen or services.enforcer_listen)
    except ValueError as exc:
        parser.error(f"--listen: {exc}")
    token_file = args.token_file or services.token_file
    try:
        token = load_token(token_file)
    except TokenFileError as exc:
        parser.error(f"refusing to start: {exc}")
    prometheus_url = args.prometheus_url or services.prometheus_url
    audit_path = Path(args.audit_log or services.audit_log or state_dir / "enforcer-audit.jsonl")
    journal_path = Path(args.journal or state_dir / "enforcer.db")
    notice_path = args.notice_path or services.notice_path
    if not notice_path.startswith("/"):
        parser.error(f"--notice-path: must be an absolute path in the container: {notice_path}")

    config = EnforcerConfig(
        journal_path=journal_path,
        audit_path=audit_path,
        prometheus_url=prometheus_url,
        docker_host=args.docker_host,
        notice_path=notice_path,
        dry_run=args.dry_run,
        max_body=args.max_body,
        health_ttl=args.health_ttl,
        node=args.node or "",
        worker=WorkerSettings(
            threads=args.workers,
            action_delay=args.action_delay,
            retry_initial=args.retry_initial,
            retry_max=args.retry_max,
            poll_interval=args.poll_interval,
            retention=args.journal_retention,
            watch_interval=args.watch_interval,
            stuck_after=args.stuck_after,
        ),
    )
    enforcer = Enforcer(config, policy=policy, token=token)
    PolicyReloader(
        policy, path=args.policy, apply=enforcer.use_policy, registry=enforcer.metrics.registry
    ).on_sighup()
    server = enforcer.make_server(host, port, threads=args.threads)
    logger.info(
        "enforcer listening on %s:%s policy=%s prometheus=%s docker=%s token_file=%s "
        "journal=%s audit=%s notice_path=%s dry_run=%s workers=%d action_delay=%s pending=%d "
        "node=%s cluster_nodes=%s",
        host, server.effective_port, policy.source, prometheus_url,
        args.docker_host or "default", token_file, journal_path, audit_path, notice_path,
        args.dry_run, args.workers, format_duration(args.action_delay),
        enforcer.journal.stats().depth, enforcer.node_scope.own,
        ",".join(enforcer.node_scope.cluster) or "-",
    )  # fmt: skip

    def terminate(signum: int, _frame: object) -> None:
        logger.info("signal %d: shutting down", signum)
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, terminate)
    enforcer.worker.start()
    try:
        server.run()
    finally:
        enforcer.close()
        logger.info("enforcer stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
