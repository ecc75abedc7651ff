"""`container`: deploy, stop, retire and list your GPU containers (through the allocator)."""

from __future__ import annotations

import argparse
import json
import os
import pwd
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ds01.cliflags import add_docker_host_flag, duration_arg
from ds01.containers import LABEL_ALLOCATION, LABEL_DEVICES, LABEL_MANAGED, LABEL_TYPE, LABEL_USER
from ds01.durations import format_duration
from ds01.gpu_status.query import PrometheusError

from .client import AllocatorClient, AllocatorUnavailable, Refused
from .container_listing import (
    ListingContext,
    describe,
    device_text,
    render_history,
    render_listing,
)
from .docker_endpoint import gateway_host
from .extend_cli import add_extend_parser, extend
from .usage_cli import add_usage_history_flags, add_usage_parser, usage
from .wrapper import Progress

DEFAULT_IMAGE = os.environ.get("DS01_DEFAULT_IMAGE", "ubuntu:24.04")
# PID 1 that sleeps forever but ends at once on `docker stop` (a bare sleep ignores SIGTERM).
KEEP_ALIVE = "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done"
_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")


class CliError(RuntimeError):
    """A message for the user; exit status 1."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="container", description="Deploy, stop, retire and list your GPU containers."
    )
    parser.add_argument(
        "--socket", default=None, help="allocator socket (env DS01_ALLOCATOR_SOCKET)"
    )
    add_docker_host_flag(parser)
    parser.add_argument(
        "--policy",
        default=os.environ.get("DS01_POLICY"),
        help="policy file, for services.exporter_url (env DS01_POLICY)",
    )
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    deploy = sub.add_parser("deploy", help="allocate GPUs and start a container")
    deploy.add_argument("name", help="container name")
    deploy.add_argument("--image", default=DEFAULT_IMAGE, help=f"image (default {DEFAULT_IMAGE})")
    size = deploy.add_mutually_exclusive_group()
    size.add_argument("--gpus", type=int, default=1, help="number of devices (default 1)")
    size.add_argument("--profile", default=None, help="one MIG instance of this profile")
    deploy.add_argument(
        "--full-gpu", action="store_true", help="whole GPUs only (groups allowed them)"
    )
    deploy.add_argument("--home", default=None, help="folder mounted as home (default: yours)")
    deploy.add_argument(
        "--workspace",
        default=None,
        help="folder mounted at /workspace (default <home>/workspace/<name>)",
    )
    deploy.add_argument("--network", default=None, help="Docker network (default: Docker's)")
    deploy.add_argument(
        "--command", default=None, help="shell command to run (default: stay up until stopped)"
    )
    for name, text in (
        ("retire", "stop, remove and free its GPUs now"),
        ("stop", "stop it (its GPUs are kept for the hold period)"),
    ):
        action = sub.add_parser(name, help=text)
        action.add_argument("name", help="container name")
        action.add_argument(
            "--reason",
            default="",
            help="admins acting on someone else's container: why (shown in its owner's "
            "container ls and history)",
        )
    for name in ("list", "ls"):
        listing = sub.add_parser(
            name, help="your containers: GPU, state, idle for, next stop, why one stopped"
        )
        listing.add_argument("--all", action="store_true", help="everyone's (root only)")
        listing.add_argument(
            "--exporter-url",
            default=os.environ.get("DS01_EXPORTER_URL"),
            help="exporter for idle and deadline data (env DS01_EXPORTER_URL; default: the "
            "policy's services.exporter_url)",
        )
        listing.add_argument("--json", action="store_true", help="machine-readable output")
        listing.add_argument("-v", "--verbose", action="store_true", help="show device UUIDs too")
    history = sub.add_parser(
        "history", help="your stops, warnings, grants and waits (from the audit log)"
    )
    history.add_argument("--user", default=None, help="another user's (admins only)")
    history.add_argument(
        "--since",
        type=duration_arg,
        default=None,
        help="only this far back, e.g. 2h or 7d (default: everything kept)",
    )
    history.add_argument(
        "--limit", type=int, default=50, help="at most this many, newest (default 50)"
    )
    history.add_argument("--json", action="store_true", help="machine-readable output")
    add_usage_history_flags(history)
    add_extend_parser(sub)
    add_usage_parser(sub)
    return parser


def _docker(host: str | None):
    """Docker at `host`; with none chosen, the gateway when its socket is there."""
    from ds01.dockerio import connect

    if not host:
        host, warning = gateway_host([], os.environ)
        if warning:
            print(f"ds01: {warning}", file=sys.stderr)
    return connect(host)


def _me(client: AllocatorClient) -> str:
    try:
        return str(client.usage()["user"])
    except (AllocatorUnavailable, Refused, KeyError):
        return pwd.getpwuid(os.getuid()).pw_name


def _owned(container: Any, me: str) -> None:
    owner = (container.labels or {}).get(LABEL_USER, "")
    if owner != me and os.getuid() != 0:
        raise CliError(f"container {container.name} belongs to {owner or 'someone else'}")


def _get(docker_client: Any, name: str) -> Any:
    import docker

    try:
        return docker_client.containers.get(name)
    except docker.errors.NotFound:
        raise CliError(f"no container named {name}") from None


def deploy(args: argparse.Namespace, client: AllocatorClient) -> int:
    import docker
    from docker.types import DeviceRequest, Mount

    if not _NAME.match(args.name):
        raise CliError(f"invalid name {args.name!r}: use letters, digits, '_', '.', '-'")
    if args.gpus < 1:
        raise CliError("--gpus: must be at least 1")
    docker_client = _docker(args.docker_host)
    try:
        docker_client.containers.get(args.name)
        raise CliError(f"a container named {args.name} exists already")
    except docker.errors.NotFound:
        pass
    progress = Progress()
    try:
        alloc = client.allocate(
            count=1 if args.profile else args.gpus,
            profile=args.profile,
            full_gpu=args.full_gpu,
            container_type="ds01",
            name=args.name,
            progress=progress,
        )
    finally:
        progress.done()
    user = alloc["user"]
    try:
        account = pwd.getpwnam(user)
    except KeyError:
        account = None
    home = Path(args.home or (account.pw_dir if account else f"/home/{user}"))
    workspace = Path(args.workspace or home / "workspace" / args.name)
    try:
        workspace.mkdir(parents=True, exist_ok=True)
        labels = {
            LABEL_MANAGED: "true",
            LABEL_USER: user,
            LABEL_ALLOCATION: alloc["id"],
            LABEL_DEVICES: ",".join(alloc["devices"]),
            LABEL_TYPE: "ds01",
        }
        run_as = f"{account.pw_uid}:{account.pw_gid}" if account and account.pw_uid else None
        extra: dict[str, Any] = {"network_mode": args.network} if args.network else {}
        container = docker_client.containers.run(
            args.image,
            ["sh", "-c", args.command or KEEP_ALIVE],
            name=args.name,
            detach=True,
            labels=labels,
            device_requests=[DeviceRequest(device_ids=alloc["devices"], capabilities=[["gpu"]])],
            mounts=[
                Mount(str(home), str(home), type="bind"),
                Mount("/workspace", str(workspace), type="bind"),
            ],
            working_dir="/workspace",
            environment={"HOME": str(home)},
            user=run_as,
            **extra,
        )
    except (OSError, docker.errors.DockerException) as exc:
        client.release(alloc["id"])
        raise CliError(f"could not start {args.name}: {exc}") from exc
    try:
        known = {d["device_uuid"]: d for d in client.devices()}
    except (AllocatorUnavailable, Refused):
        known = {}
    shown = [
        {
            "index": (known.get(u) or {}).get("index"),
            "profile": (known.get(u) or {}).get("profile"),
            "uuid": u,
        }
        for u in alloc["devices"]
    ]
    print(f"deployed {args.name} ({container.short_id}) on {device_text(shown)}")
    return 0


def _own_container(args: argparse.Namespace, client: AllocatorClient) -> Any:
    """The container named on the command line, when the caller owns it (or is root)."""
    container = _get(_docker(args.docker_host), args.name)
    _owned(container, _me(client))
    return container


def _note_admin_stop(args: argparse.Namespace, client: AllocatorClient, container: Any) -> None:
    """Root stopping someone else's container: tell its owner why, through their history."""
    owner = (container.labels or {}).get(LABEL_USER, "")
    if not owner or owner == _me(client):
        return
    try:
        client.note_admin_stop(
            container_id=container.id,
            container=container.name,
            user=owner,
            detail=f"{args.reason} (container {args.action} by {_me(client)})"
            if args.reason
            else f"container {args.action} by {_me(client)}",
        )
    except (AllocatorUnavailable, Refused) as exc:
        print(f"container {args.action}: not recorded for {owner}: {exc}", file=sys.stderr)


def retire(args: argparse.Namespace, client: AllocatorClient) -> int:
    container = _own_container(args, client)
    _note_admin_stop(args, client, container)
    allocation = (container.labels or {}).get(LABEL_ALLOCATION, "")
    if container.status == "running":
        container.stop(timeout=10)
    container.remove(force=True)
    if allocation:
        try:
            client.release(allocation)
        except Refused as exc:
            if exc.status != 404:
                raise
    print(f"retired {args.name}; its GPU is free again")
    return 0


def stop(args: argparse.Namespace, client: AllocatorClient) -> int:
    container = _own_container(args, client)
    container.stop(timeout=10)
    _note_admin_stop(args, client, container)
    try:
        hold = format_duration(float(client.usage()["gpu_hold_after_stop"]))
    except (AllocatorUnavailable, Refused, KeyError):
        hold = "the hold period"
    print(
        f"stopped {args.name}; its GPU stays yours for {hold} "
        f"(docker start {args.name} resumes, container retire {args.name} frees it)"
    )
    return 0


def listing(args: argparse.Namespace, client: AllocatorClient) -> int:
    docker_client = _docker(args.docker_host)
    me = _me(client)
    if args.all and os.getuid() != 0:
        raise CliError("--all is for root")
    label = f"{LABEL_MANAGED}=true" if args.all else f"{LABEL_USER}={me}"
    containers = docker_client.containers.list(all=True, filters={"label": label})
    ctx = ListingContext(args, client)
    now = time.time()
    items = [describe(c, ctx, me=me, now=now) for c in sorted(containers, key=lambda c: c.name)]
    if args.json:
        print(json.dumps({"user": me, "now": now, "containers": items}, indent=2))
        return 0
    print(render_listing(items, now=now, verbose=args.verbose))
    return 0


def history(args: argparse.Namespace, client: AllocatorClient) -> int:
    if args.usage:
        return usage(args, client, _me(client))
    if not 1 <= args.limit <= 1000:
        raise CliError("--limit: must be from 1 to 1000")
    now = time.time()
    since = now - args.since if args.since is not None else None
    items = client.history(user=args.user, since=since, limit=args.limit)
    if args.json:
        print(json.dumps({"user": args.user or _me(client), "history": items}, indent=2))
        return 0
    if not items:
        print("nothing recorded yet: no stops, warnings, grants or waits")
        return 0
    print(render_history(items, now=now))
    return 0


ACTIONS = {
    "deploy": deploy,
    "retire": retire,
    "stop": stop,
    "list": listing,
    "ls": listing,
    "history": history,
    "extend": extend,
    "usage": lambda args, client: usage(args, client, _me(client)),
}


def main(argv: Sequence[str] | None = None) -> int:
    import docker

    parser = build_parser()
    args = parser.parse_args(argv)
    client = AllocatorClient(args.socket)
    try:
        return ACTIONS[args.action](args, client)
    except Refused as exc:
        print(f"container {args.action}: {exc.message}", file=sys.stderr)
    except (CliError, AllocatorUnavailable) as exc:
        print(f"container {args.action}: {exc}", file=sys.stderr)
    except docker.errors.DockerException as exc:
        print(f"container {args.action}: Docker: {exc}", file=sys.stderr)
    except PrometheusError as exc:
        print(f"container {args.action}: {exc}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
