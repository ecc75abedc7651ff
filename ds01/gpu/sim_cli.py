"""`ds01 sim-gpu`: drive the sim backend's activity from a shell, for demos and manual tests."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from .sim import SimBackend, SimStateFile


def default_state_file() -> str:
    state_dir = os.environ.get("DS01_STATE_DIR", "/var/lib/ds01")
    return os.environ.get("DS01_SIM_STATE", os.path.join(state_dir, "sim-gpu-state.json"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ds01 sim-gpu", description=__doc__)
    parser.add_argument(
        "--state-file",
        default=None,
        help="sim state file (env DS01_SIM_STATE; default $DS01_STATE_DIR/sim-gpu-state.json)",
    )
    parser.add_argument("--topology", default=None, help="sim topology YAML (default: built-in)")
    sub = parser.add_subparsers(dest="action", required=True)
    put = sub.add_parser("set", help="set one device's activity")
    put.add_argument("device", help="device UUID or index (0, 0:2)")
    level = put.add_mutually_exclusive_group()
    level.add_argument("--busy", action="store_true", help="activity 1.0")
    level.add_argument("--idle", action="store_true", help="activity 0.0")
    level.add_argument("--activity", type=float, help="activity ratio 0..1")
    put.add_argument("--pid", type=int, action="append", help="host PID on the device (repeat)")
    put.add_argument(
        "--container", action="append", help="container whose main PID is on the device"
    )
    put.add_argument("--docker-host", default=os.environ.get("DOCKER_HOST"))
    sub.add_parser("show", help="print the devices and their simulated state")
    clear = sub.add_parser("clear", help="forget the state of one device or all")
    clear.add_argument("device", nargs="?")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    state = SimStateFile(args.state_file or default_state_file())
    if args.action == "set":
        pids = list(args.pid or [])
        if args.container:
            from ..dockerio import connect

            client = connect(args.docker_host)
            for name in args.container:
                pids.append(int(client.containers.get(name).attrs["State"]["Pid"]))
        activity = 1.0 if args.busy else 0.0 if args.idle else args.activity
        state.set_device(args.device, activity=activity, pids=pids if pids else None)
    elif args.action == "clear":
        state.clear(args.device)
    backend = SimBackend.from_files(args.topology, state.path)
    reading = backend.read()
    rows = [
        {
            "index": d.index,
            "uuid": d.device_uuid,
            "profile": d.profile or "whole GPU",
            "activity": reading.samples[d.device_uuid].activity_ratio,
            "pids": list(reading.samples[d.device_uuid].process_pids),
        }
        for d in backend.devices()
    ]
    json.dump(rows, sys.stdout, indent=2)
    print()
    return 0
