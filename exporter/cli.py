"""`ds01 exporter` / `python -m exporter`: serve GPU and container metrics for Prometheus."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from prometheus_client import generate_latest

from ds01.cliflags import add_common_flags, load_policy_for, positive_duration_arg, split_listen
from ds01.dockerio import connect
from ds01.gpu import GpuBackend, open_backend
from ds01.logs import setup_logging
from ds01.policy import Services
from ds01.policy_reload import PolicyReloader

from .inventory import DockerLink
from .server import HttpServer
from .service import ExporterService, Intervals

logger = logging.getLogger(__name__)

DEFAULT_LISTEN = Services.exporter_listen


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ds01 exporter",
        description="Serve per-device and per-container GPU activity, idle and runtime clocks "
        "and deadlines for Prometheus (/metrics), plus /api/state (JSON) and /healthz.",
    )
    add_common_flags(parser, default_listen=DEFAULT_LISTEN)
    gpu = parser.add_argument_group("GPU backend")
    gpu.add_argument(
        "--gpu-backend",
        choices=["auto", "nvml", "sim"],
        default=None,
        help="auto = NVML when it initialises, else sim (default: the policy's gpu.backend, auto)",
    )
    gpu.add_argument(
        "--sim-topology",
        default=None,
        metavar="FILE",
        help="sim topology YAML (default: the policy's gpu.sim_topology, else the built-in one)",
    )
    gpu.add_argument(
        "--sim-state",
        default=os.environ.get("DS01_SIM_STATE"),
        metavar="FILE",
        help="sim activity file (env DS01_SIM_STATE; default <state-dir>/sim-gpu-state.json)",
    )
    timing = parser.add_argument_group("intervals (durations such as 500ms, 5s, 1m)")
    timing.add_argument(
        "--collect-interval",
        type=positive_duration_arg,
        default=5.0,
        metavar="DURATION",
        help="how often to sample the GPUs and publish a snapshot (default 5s)",
    )
    timing.add_argument(
        "--keepalive-interval",
        type=positive_duration_arg,
        default=60.0,
        metavar="DURATION",
        help="how often, at most, to read a keep-alive file through the Docker archive API "
        "for a container without a host mount of its folder (default 60s)",
    )
    timing.add_argument(
        "--docker-retry-interval",
        type=positive_duration_arg,
        default=None,
        metavar="DURATION",
        help="wait between reconnect attempts while Docker is down (default: the collect interval)",
    )
    parser.add_argument(
        "--once",
        action="store_true",
        help="list containers, collect once, print the metrics to stdout and exit",
    )
    return parser


def open_gpu_backend(kind: str, topology: str | None, sim_state: str) -> GpuBackend:
    """open_backend, except that `auto` also falls back to sim when NVML support is missing."""
    try:
        return open_backend(kind, sim_topology=topology, sim_state=sim_state)
    except ImportError as exc:
        if kind != "auto":
            raise
        logger.info("gpu backend: NVML support not available (%s); using the sim backend", exc)
        return open_backend("sim", sim_topology=topology, sim_state=sim_state)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    policy = load_policy_for(parser, args)
    state_dir = args.state_dir or policy.services.state_dir
    try:
        host, port = split_listen(args.listen or policy.services.exporter_listen)
    except ValueError as exc:
        parser.error(f"--listen: {exc}")
    try:
        Path(state_dir).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        parser.error(f"--state-dir {state_dir}: cannot create: {exc.strerror}")
    kind = args.gpu_backend or policy.gpu.backend
    topology = args.sim_topology or policy.gpu.sim_topology
    sim_state = args.sim_state or os.path.join(state_dir, "sim-gpu-state.json")
    try:
        backend = open_gpu_backend(kind, topology, sim_state)
    except Exception as exc:  # noqa: BLE001 - NvmlUnavailable, a bad topology file, …
        parser.error(f"--gpu-backend {kind}: {exc}")
    intervals = Intervals(
        collect=args.collect_interval,
        keepalive=args.keepalive_interval,
        docker_retry=args.docker_retry_interval or args.collect_interval,
    )
    service = ExporterService(
        policy=policy,
        backend=backend,
        docker_client=DockerLink(lambda: connect(args.docker_host, timeout=10)),
        state_dir=state_dir,
        intervals=intervals,
    )
    if args.once:
        return _run_once(service)
    PolicyReloader(
        policy, path=args.policy, apply=service.collector.use_policy, registry=service.live_registry
    ).on_sighup()
    return _serve(service, host, port, backend.name, state_dir, policy.source, intervals)


def _run_once(service: ExporterService) -> int:
    try:
        published = service.collect_now()
    except Exception as exc:  # noqa: BLE001 - report any Docker failure as one line
        print(f"ds01 exporter: collection failed: {exc}", file=sys.stderr)
        return 1
    finally:
        service.collector.stop()
    sys.stdout.write(generate_latest(service.registry).decode())
    return 0 if published else 1


def _serve(
    service: ExporterService,
    host: str,
    port: int,
    backend: str,
    state_dir: str,
    policy_source: str,
    intervals: Intervals,
) -> int:
    try:
        server = HttpServer(service.app(), host, port)
    except OSError as exc:
        print(f"ds01 exporter: cannot listen on {host}:{port}: {exc.strerror}", file=sys.stderr)
        return 1
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        logger.info("signal %s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    logger.info(
        "exporter starting: listen=%s:%d backend=%s policy=%s state_dir=%s collect=%gs "
        "keepalive=%gs docker_retry=%gs",
        server.host,
        server.port,
        backend,
        policy_source,
        state_dir,
        intervals.collect,
        intervals.keepalive,
        intervals.docker_retry,
    )
    service.start()
    server.start()
    stop.wait()
    server.close()
    service.stop()
    logger.info("exporter stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
