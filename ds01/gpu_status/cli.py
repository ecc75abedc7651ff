"""`gpu-status`: who holds which GPU / MIG instance, how idle it is, and when it will be stopped."""

from __future__ import annotations

import argparse
import json
import os
import pwd
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime, tzinfo
from typing import IO

from ..cliflags import duration_arg
from ..clock import SYSTEM_CLOCK, Clock
from ..cluster_policy import valid_node_name
from ..policy import DEFAULT_POLICY_PATH, Exemption, PolicyError, load_policy_or_default
from .in_force import in_force, in_force_lines, keep_alive_ends
from .query import PrometheusClient, PrometheusError
from .render import render_table, use_colour
from .usage import UsageWindow, render_usage, user_usage
from .view import DEFAULT_STALE_AFTER, StatusView, build_view
from .view_json import view_to_json

DEFAULT_URL = "http://127.0.0.1:9090"
EXIT_UNAVAILABLE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpu-status",
        description="Show every GPU and MIG instance: memory, activity, holder, idle time "
        "and when its container will be stopped. Reads Prometheus only.",
    )
    parser.add_argument(
        "--prometheus-url",
        default=os.environ.get("DS01_PROMETHEUS_URL"),
        help="Prometheus base URL (env DS01_PROMETHEUS_URL; default: the policy's "
        f"services.prometheus_url, {DEFAULT_URL})",
    )
    parser.add_argument(
        "--policy",
        default=os.environ.get("DS01_POLICY"),
        help=f"policy file, read only for services.prometheus_url (env DS01_POLICY; "
        f"default {DEFAULT_POLICY_PATH} when it exists)",
    )
    who = parser.add_mutually_exclusive_group()
    who.add_argument("--mine", action="store_true", help="only devices held by your containers")
    who.add_argument("--user", metavar="USER", help="only devices held by USER")
    parser.add_argument(
        "--node",
        metavar="NAME",
        help="only devices of node NAME (the `node` label Prometheus adds per host); "
        "default: every node, grouped by node when there are several",
    )
    parser.add_argument(
        "--json", action="store_true", help="print JSON (fields in docs/gpu-status.md)"
    )
    parser.add_argument("--watch", action="store_true", help="refresh until Ctrl-C")
    parser.add_argument(
        "--interval",
        type=duration_arg,
        default=2.0,
        help="refresh interval for --watch (duration, default 2s)",
    )
    parser.add_argument(
        "--color",
        "--colour",
        dest="color",
        choices=("auto", "always", "never"),
        default="auto",
        help="colour the table: auto (default) = only on a terminal and without NO_COLOR",
    )
    parser.add_argument(
        "--timeout",
        type=duration_arg,
        default=5.0,
        help="how long to wait for Prometheus (duration, default 5s)",
    )
    parser.add_argument(
        "--stale-after",
        type=duration_arg,
        default=DEFAULT_STALE_AFTER,
        help="warn when the exporter's last collection is older than this (default 1m)",
    )
    parser.add_argument(
        "--exporter-url",
        default=os.environ.get("DS01_EXPORTER_URL"),
        help="exporter, for keep-alive ends with --mine/--user (env DS01_EXPORTER_URL; "
        "default: the policy's services.exporter_url)",
    )
    parser.add_argument("--watch-count", type=int, default=None, help=argparse.SUPPRESS)
    return parser


def prometheus_url(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """Flag, then env (already the flag's default), then the policy's services section."""
    if args.prometheus_url:
        return args.prometheus_url
    try:
        return load_policy_or_default(args.policy).services.prometheus_url or DEFAULT_URL
    except PolicyError as exc:
        parser.error(str(exc))
        raise  # unreachable: parser.error exits


def current_user() -> str:
    """The caller's login name from the password database (not $USER, which anyone can set)."""
    uid = os.getuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def render_once(
    client: PrometheusClient,
    args: argparse.Namespace,
    *,
    clock: Clock,
    user: str | None,
    colour: bool,
    tz: tzinfo | None,
) -> str:
    """One refresh: query, build the view, render it as text or JSON."""
    now = clock.time()
    raw = client.fetch_status(at=now)
    view = build_view(raw, now=now, user=user, node=args.node, stale_after=args.stale_after)
    forced = _in_force(view, args) if user is not None else None
    usage = _usage(client, user, now) if user is not None else None
    if args.json:
        document = view_to_json(view, prometheus_url=client.url)
        if forced is not None:
            document["in_force"] = forced
        if usage is not None:
            document["usage"] = [w.to_json() for w in usage]
        return json.dumps(document, indent=None if args.watch else 2) + "\n"
    text = render_table(view, colour=colour, tz=tz)
    if forced is not None:
        text += in_force_lines(forced, now=now, tz=tz)
    if usage is not None and user is not None:
        text += render_usage(user, usage) + "\n"
    return text


def _usage(client: PrometheusClient, user: str, now: float) -> list[UsageWindow] | None:
    """The caller's GPU-hours; left out (not an error) where the usage rules give no answer."""
    try:
        return user_usage(client, user, now)
    except PrometheusError:
        return None


def _in_force(view: StatusView, args: argparse.Namespace) -> dict:
    """Exemptions from the policy (when readable) and keep-alive ends from the exporter."""
    try:
        policy = load_policy_or_default(args.policy)
    except PolicyError:
        policy = None
    exemptions: tuple[Exemption, ...] = ()
    if policy is not None and view.user_filter:
        at = datetime.fromtimestamp(view.now, tz=UTC)
        exemptions = policy.limits_for(view.user_filter, "docker", at).exemptions
    url = args.exporter_url or (policy.services.exporter_url if policy else None)
    return in_force(
        view, exemptions=exemptions, keep_alive_until=keep_alive_ends(url, args.timeout)
    )


def _watch(
    client: PrometheusClient,
    args: argparse.Namespace,
    *,
    clock: Clock,
    user: str | None,
    colour: bool,
    tz: tzinfo | None,
    out: IO[str],
) -> int:
    """Refresh every interval; an error is shown in place of the table and retried."""
    clear = "\033[H\033[2J" if getattr(out, "isatty", lambda: False)() and not args.json else ""
    done = 0
    try:
        while args.watch_count is None or done < args.watch_count:
            try:
                body = render_once(client, args, clock=clock, user=user, colour=colour, tz=tz)
            except PrometheusError as exc:
                body = f"gpu-status: {exc}\n"
            if args.json:
                out.write(body)
            else:
                stamp = time.strftime("%H:%M:%S", time.localtime(clock.time()))
                out.write(f"{clear}Every {args.interval:g}s: gpu-status ({client.url})  {stamp}\n")
                out.write(body + ("" if clear else "\n"))
            out.flush()
            done += 1
            if args.watch_count is None or done < args.watch_count:
                time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0
    return 0


def main(
    argv: Sequence[str] | None = None,
    *,
    clock: Clock = SYSTEM_CLOCK,
    out: IO[str] | None = None,
    tz: tzinfo | None = None,
) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.node is not None and not valid_node_name(args.node):
        parser.error(f"--node: not a host-like name: {args.node!r}")
    stream = out or sys.stdout
    url = prometheus_url(parser, args)
    user = current_user() if args.mine else args.user
    colour = use_colour(args.color, stream)
    client = PrometheusClient(url, timeout=args.timeout)
    if args.watch:
        return _watch(client, args, clock=clock, user=user, colour=colour, tz=tz, out=stream)
    try:
        text = render_once(client, args, clock=clock, user=user, colour=colour, tz=tz)
    except PrometheusError as exc:
        print(f"gpu-status: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    stream.write(text)
    return 0
