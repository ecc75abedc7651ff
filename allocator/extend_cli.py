"""`container extend NAME [DURATION] [--idle]`: the caller moves their own container's
deadline within the group's bounds (kept apart from container_cli.py so each stays small)."""

from __future__ import annotations

import argparse
from typing import Any

from ds01.durations import format_duration

from .client import AllocatorClient


def add_extend_parser(sub: Any) -> None:
    extend = sub.add_parser(
        "extend", help="move your container's runtime (or --idle) deadline within your limits"
    )
    extend.add_argument("name", help="container name")
    extend.add_argument(
        "duration",
        nargs="?",
        default=None,
        help="how much later, e.g. 2h or 90m (default: the most one extension may add)",
    )
    extend.add_argument(
        "--idle", action="store_true", help="move the idle deadline instead of the runtime one"
    )


def extend(args: argparse.Namespace, client: AllocatorClient) -> int:
    kind = "idle" if args.idle else "runtime"
    answer = client.extend(args.name, args.duration, kind=kind)
    ext = answer["extension"]
    print(
        f"{ext['container_name']}: {kind} deadline moved {format_duration(ext['seconds'])} later "
        f"({format_duration(answer['total_seconds'])} of {kind} extensions in all, "
        f"extension {answer['extensions_used']} of this container)"
    )
    return 0
