"""Entry points: the `ds01` umbrella command and the user tools.

Each service owns its own `main(argv) -> int`; this module only dispatches, importing a
service when it is asked for so that `ds01 check-config` stays light.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from . import __version__
from .policy import PolicyError, load_policy, policy_path, summary

# subcommand -> (module, help)
SERVICES = {
    "up": ("ds01.up", "start the whole stack in the foreground (Ctrl-C stops it)"),
    "exporter": ("exporter.cli", "serve GPU and container metrics for Prometheus"),
    "enforcer": ("enforcer.cli", "receive Alertmanager webhooks; warn owners, stop containers"),
    "allocator": ("allocator.cli", "hand out GPUs and MIG instances under quotas"),
    "gateway": ("allocator.gateway_cli", "serve the Docker API to every user, in front of dockerd"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ds01", description="GPU lifecycle for a shared multi-user GPU server."
    )
    parser.add_argument("--version", action="version", version=f"ds01 {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text) in SERVICES.items():
        sub.add_parser(name, help=help_text, add_help=False)
    check = sub.add_parser("check-config", help="validate a policy file and summarise it")
    check.add_argument("file", nargs="?", help="policy file (default: --policy / DS01_POLICY)")
    check.add_argument(
        "--what-if",
        action="store_true",
        help="evaluate FILE against the live state (Prometheus): who would be warned or stopped "
        "at once, whose deadlines move, who would be over quota; changes nothing",
    )
    check.add_argument("--json", action="store_true", help="with --what-if: JSON output")
    check.add_argument(
        "--installed",
        default=None,
        help="with --what-if: the policy in force now (default DS01_POLICY or "
        "/etc/ds01/ds01.yaml), to tell granted extensions from the deadlines",
    )
    check.add_argument(
        "--prometheus-url",
        default=os.environ.get("DS01_PROMETHEUS_URL"),
        help="with --what-if: Prometheus base URL (env DS01_PROMETHEUS_URL; default: the "
        "installed policy's services.prometheus_url)",
    )
    sim = sub.add_parser("sim-gpu", help="set simulated GPU activity (sim backend only)")
    sim.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def _run_module(module: str, argv: Sequence[str]) -> int:
    return int(importlib.import_module(module).main(list(argv)) or 0)


def main(argv: Sequence[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    if args_in and args_in[0] in SERVICES:
        return _run_module(SERVICES[args_in[0]][0], args_in[1:])
    if args_in and args_in[0] == "sim-gpu":
        from .gpu import sim_cli

        return sim_cli.main(args_in[1:])
    parser = build_parser()
    args = parser.parse_args(args_in)
    if args.command == "check-config":
        if args.what_if:
            if not args.file:
                parser.error("check-config --what-if needs the candidate FILE")
            return check_what_if(args)
        return check_config(args.file)
    parser.error(f"unknown command {args.command}")
    return 2


def check_config(path: str | None) -> int:
    """Print the one-line error and exit 1, or a short summary and exit 0."""
    try:
        policy = load_policy(path or policy_path())
    except PolicyError as exc:
        print(f"invalid policy: {exc}", file=sys.stderr)
        return 1
    print(summary(policy))
    return 0


def check_what_if(args: argparse.Namespace) -> int:
    """Validate the candidate, then judge the live containers under it; exit 0, 1 when
    invalid, 2 when the live state cannot be read."""
    import json
    import time

    from .gpu_status.query import PrometheusClient, PrometheusError
    from .whatif import what_if
    from .whatif_report import live_facts, render_text, to_json

    try:
        candidate = load_policy(args.file)
    except PolicyError as exc:
        print(f"invalid policy: {exc}", file=sys.stderr)
        return 1
    try:
        installed = load_policy(args.installed or policy_path())
    except PolicyError as exc:
        print(f"cannot read the installed policy: {exc}", file=sys.stderr)
        return 2
    url = args.prometheus_url or installed.services.prometheus_url
    now = time.time()
    try:
        containers, holdings = live_facts(PrometheusClient(url), now)
    except PrometheusError as exc:
        print(f"what-if: {exc}", file=sys.stderr)
        return 2
    result = what_if(containers, holdings, installed=installed, candidate=candidate, now=now)
    if args.json:
        print(json.dumps(to_json(result), indent=2))
    else:
        print(render_text(result))
    return 0


def gpu_status_main(argv: Sequence[str] | None = None) -> int:
    return _run_module("ds01.gpu_status", sys.argv[1:] if argv is None else argv)


def container_main(argv: Sequence[str] | None = None) -> int:
    return _run_module("allocator.container_cli", sys.argv[1:] if argv is None else argv)


def docker_wrapper_main(argv: Sequence[str] | None = None) -> int:
    return _run_module("allocator.wrapper", sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
