"""`container usage`: the caller's GPU-hours (held, busy, idle) over the last 7 and 30 days,
read from Prometheus (kept apart from container_cli.py so each stays small)."""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

from ds01.gpu_status.query import PrometheusClient
from ds01.gpu_status.usage import render_usage, user_usage
from ds01.policy import load_policy_or_default

from .client import AllocatorClient


def add_usage_parser(sub: Any) -> None:
    usage = sub.add_parser("usage", help="your GPU-hours held, busy and idle (7 and 30 days)")
    add_usage_flags(usage)


def add_usage_flags(parser: argparse.ArgumentParser) -> None:
    _prometheus_flag(parser)
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def add_usage_history_flags(history: argparse.ArgumentParser) -> None:
    """`container history --usage` (its --json is history's own)."""
    history.add_argument(
        "--usage",
        action="store_true",
        help="your GPU-hours held, busy and idle over the last 7 and 30 days instead",
    )
    _prometheus_flag(history)


def _prometheus_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--prometheus-url",
        default=os.environ.get("DS01_PROMETHEUS_URL"),
        help="Prometheus base URL (env DS01_PROMETHEUS_URL; default: the policy's "
        "services.prometheus_url)",
    )


def usage(args: argparse.Namespace, client: AllocatorClient, me: str) -> int:
    url = args.prometheus_url or load_policy_or_default(args.policy).services.prometheus_url
    at = time.time()
    windows = user_usage(PrometheusClient(url), me, at)
    if args.json:
        document = {"user": me, "evaluated_at": at, "usage": [w.to_json() for w in windows]}
        print(json.dumps(document, indent=2))
    else:
        print(render_usage(me, windows))
    return 0
