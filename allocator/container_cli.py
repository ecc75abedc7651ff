"""`container`: deploy, stop, retire and list your GPU containers (through the allocator)."""

from __future__ import annotations

import argparse
import math
import os
import pwd
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import requests

from ds01.cliflags import add_docker_host_flag
from ds01.containers import LABEL_ALLOCATION, LABEL_DEVICES, LABEL_MANAGED, LABEL_TYPE, LABEL_USER
from ds01.durations import format_duration, format_stop
from ds01.policy import PolicyError, load_policy_or_default

from .client import AllocatorClient, AllocatorUnavailable, Refused
from .docker_endpoint import gateway_host
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
    for name in ("list", "ls"):
        listing = sub.add_parser(name, help="your containers: GPU, state, idle for, stops at")
        listing.add_argument("--all", action="store_true", help="everyone's (root only)")
        listing.add_argument(
            "--exporter-url",
            default=os.environ.get("DS01_EXPORTER_URL"),
            help="exporter for idle and deadline data (env DS01_EXPORTER_URL; default: the "
            "policy's services.exporter_url)",
        )
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
    print(f"deployed {args.name} ({container.short_id}) on {', '.join(alloc['devices'])}")
    return 0


def _own_container(args: argparse.Namespace, client: AllocatorClient) -> Any:
    """The container named on the command line, when the caller owns it (or is root)."""
    container = _get(_docker(args.docker_host), args.name)
    _owned(container, _me(client))
    return container


def retire(args: argparse.Namespace, client: AllocatorClient) -> int:
    container = _own_container(args, client)
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
    try:
        hold = format_duration(float(client.usage()["gpu_hold_after_stop"]))
    except (AllocatorUnavailable, Refused, KeyError):
        hold = "the hold period"
    print(
        f"stopped {args.name}; its GPU stays yours for {hold} "
        f"(docker start {args.name} resumes, container retire {args.name} frees it)"
    )
    return 0


def exporter_state(url: str | None) -> Mapping[str, Any] | None:
    """The exporter's /api/state, or None when it cannot be read (the list shows "-")."""
    if not url:
        return None
    try:
        response = requests.get(url.rstrip("/") + "/api/state", timeout=2)
        response.raise_for_status()
        data = response.json()
    except (requests.RequestException, ValueError):
        return None
    return data if isinstance(data, Mapping) else None


def _first_number(entry: Mapping[str, Any], *keys: str) -> float | None:
    for key in keys:
        value = entry.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


def container_timing(
    state: Mapping[str, Any] | None, container_id: str, now: float
) -> tuple[str, str]:
    """("idle for", "stops at") for one container from the exporter's state; "-" if unknown."""
    if not state:
        return "-", "-"
    entries = state.get("containers") or []
    if isinstance(entries, Mapping):
        entries = [dict(v, container_id=k) for k, v in entries.items()]
    entry = next(
        (e for e in entries if isinstance(e, Mapping) and e.get("container_id") == container_id),
        None,
    )
    if entry is None:
        return "-", "-"
    idle = "-"
    if entry.get("busy") is True:
        idle = "busy"
    else:
        last_busy = _first_number(entry, "last_busy", "last_busy_timestamp", "last_busy_at")
        if last_busy is not None:
            idle = format_duration(max(0.0, now - last_busy))
    deadlines = [
        (d, reason)
        for d, reason in (
            (_first_number(entry, "idle_deadline", "idle_deadline_timestamp"), "idle"),
            (_first_number(entry, "runtime_deadline", "runtime_deadline_timestamp"), "runtime"),
        )
        if d is not None and not math.isinf(d)
    ]
    if not deadlines:
        return idle, "never"  # keep-alive fresh or exempt: the exporter sends null for +Inf
    stop_at, reason = min(deadlines)
    return idle, format_stop(stop_at, now, reason)


def listing(args: argparse.Namespace, client: AllocatorClient) -> int:
    import time

    docker_client = _docker(args.docker_host)
    me = _me(client)
    if args.all and os.getuid() != 0:
        raise CliError("--all is for root")
    label = f"{LABEL_MANAGED}=true" if args.all else f"{LABEL_USER}={me}"
    containers = docker_client.containers.list(all=True, filters={"label": label})
    try:
        devices = {d["device_uuid"]: d for d in client.devices()}
    except (AllocatorUnavailable, Refused):
        devices = {}
    url = args.exporter_url
    if url is None:
        try:
            url = load_policy_or_default(args.policy).services.exporter_url
        except PolicyError:
            url = None
    state = exporter_state(url)
    rows = [("NAME", "GPU", "STATE", "IDLE FOR", "STOPS AT")]
    now = time.time()
    for container in sorted(containers, key=lambda c: c.name):
        uuids = [u for u in (container.labels or {}).get(LABEL_DEVICES, "").split(",") if u]
        gpus = ",".join(_device_name(devices.get(u), u) for u in uuids) or "-"
        idle, stops = container_timing(state, container.id, now)
        rows.append((container.name, gpus, container.status, idle, stops))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    return 0


def _device_name(device: Mapping[str, Any] | None, uuid: str) -> str:
    if device is None:
        return uuid[:12]
    return f"{device['index']}({device['profile'] or 'gpu'})"


ACTIONS = {"deploy": deploy, "retire": retire, "stop": stop, "list": listing, "ls": listing}


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
    return 1


if __name__ == "__main__":
    sys.exit(main())
