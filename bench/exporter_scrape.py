"""Exporter scrape benchmark: 500 GPU containers, 56 devices; scrape latency and cycle CPU time.

Containers reach the collector through `Inventory.apply_event` (the events-stream path) with
synthetic `docker inspect` answers; GPUs come from the sim backend (8 H200 x 7 MIG 1g.18gb).
The scrape goes over HTTP to the real waitress/Flask app. Run:

    .venv/bin/python bench/exporter_scrape.py [--containers 500] [--scrapes 500]
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests
from prometheus_client import CollectorRegistry, generate_latest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ds01.gpu.sim import SimBackend, SimStateFile  # noqa: E402
from ds01.policy import default_policy  # noqa: E402
from exporter.clocks import ClockStore  # noqa: E402
from exporter.collector import Collector  # noqa: E402
from exporter.health import ErrorCounters  # noqa: E402
from exporter.inventory import Inventory  # noqa: E402
from exporter.keepalive import KeepAliveChecker  # noqa: E402
from exporter.metrics import SnapshotCollector  # noqa: E402
from exporter.server import HttpServer, make_app  # noqa: E402
from exporter.snapshot import snapshot_json  # noqa: E402

TOPOLOGY = "seed: bench\ngpus:\n" + "".join(
    f"  - {{model: NVIDIA H200, memory: 141gb, gpm: true, mig: [{', '.join(['1g.18gb'] * 7)}]}}\n"
    for _ in range(8)
)


def inspect_doc(n: int, device_uuid: str, workspace: Path) -> dict:
    cid = hashlib.sha256(f"bench-{n}".encode()).hexdigest()
    started = "2026-01-01T00:00:00.000000000Z"
    return {
        "Id": cid,
        "Name": f"/job-{n}",
        "Created": started,
        "Config": {
            "Image": "pytorch/pytorch:2.4",
            "Env": ["PATH=/usr/bin"],
            "Labels": {
                "ds01.managed": "true",
                "ds01.user": f"user{n % 60}",
                "ds01.allocation": f"alloc-{n}",
            },
        },
        "State": {"Running": True, "StartedAt": started, "Pid": 0},
        "HostConfig": {"DeviceRequests": [{"DeviceIDs": [device_uuid], "Capabilities": [["gpu"]]}]},
        "Mounts": [{"Type": "bind", "Source": str(workspace), "Destination": "/workspace"}],
    }


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--containers", type=int, default=500)
    parser.add_argument("--scrapes", type=int, default=500)
    parser.add_argument("--cycles", type=int, default=20)
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="ds01-bench-"))
    (work / "topology.yaml").write_text(TOPOLOGY)
    state = SimStateFile(work / "sim.json")
    backend = SimBackend.from_files(work / "topology.yaml", state.path)
    devices = backend.devices()
    for i, device in enumerate(devices):  # half busy, each with a few (foreign) host PIDs
        state.set_device(device.device_uuid, busy=i % 2 == 0, pids=[10_000_000 + i, 20_000_000 + i])

    docs = {}
    for n in range(args.containers):
        workspace = work / f"ws{n}"
        workspace.mkdir()
        if n % 3 == 0:
            (workspace / ".keep-alive").touch()
        doc = inspect_doc(n, devices[n % len(devices)].device_uuid, workspace)
        docs[doc["Id"]] = doc
    inspect_calls = {"n": 0}

    def inspect(container_id: str) -> dict | None:
        inspect_calls["n"] += 1
        return docs.get(container_id)

    inventory = Inventory(inspect, devices)
    inventory.replace_all([])
    for cid in docs:
        inventory.apply_event({"Type": "container", "Action": "start", "Actor": {"ID": cid}})
    errors = ErrorCounters()
    policy = default_policy()
    collector = Collector(
        backend=backend,
        inventory=inventory,
        policy=policy,
        keepalive=KeepAliveChecker(
            path=policy.keep_alive.path, archive_stat=None, interval=60, errors=errors
        ),
        errors=errors,
        store=ClockStore(work / "state"),
        interval=5.0,
    )

    cpu, wall = [], []
    for i in range(args.cycles + 3):
        started = time.perf_counter()
        assert collector.collect_once()
        if i >= 3:
            wall.append(time.perf_counter() - started)
            cpu.append(collector.last_cycle_cpu_seconds)
    snap = collector.snapshot
    assert snap is not None and len(snap.containers) == args.containers

    registry = CollectorRegistry()
    registry.register(
        SnapshotCollector(lambda: collector.snapshot, errors, version="bench", backend="sim")
    )
    render = []
    for _ in range(50):
        started = time.perf_counter()
        body = generate_latest(registry)
        render.append(time.perf_counter() - started)

    app = make_app(registry, lambda: snapshot_json(collector.snapshot), lambda: (True, {}))
    server = HttpServer(app, "127.0.0.1", 0)
    server.start()
    url = f"http://127.0.0.1:{server.port}/metrics"
    calls_before = inspect_calls["n"]
    latencies, sizes = [], []
    with requests.Session() as session:
        for _ in range(10):
            session.get(url, timeout=10)
        for _ in range(args.scrapes):
            started = time.perf_counter()
            response = session.get(url, timeout=10)
            latencies.append(time.perf_counter() - started)
            sizes.append(len(response.content))
    server.close()
    assert inspect_calls["n"] == calls_before, "a scrape must not call Docker"

    series = sum(1 for line in body.decode().splitlines() if line and not line.startswith("#"))
    ms = 1000.0
    print(f"containers={args.containers} devices={len(devices)} series={series}")
    print(
        f"scrape over HTTP: p50={pct(latencies, 0.5) * ms:.1f}ms p99={pct(latencies, 0.99) * ms:.1f}ms "
        f"max={max(latencies) * ms:.1f}ms bytes={statistics.median(sizes):.0f} (n={args.scrapes})"
    )
    print(
        f"render only (generate_latest): p50={pct(render, 0.5) * ms:.1f}ms "
        f"p99={pct(render, 0.99) * ms:.1f}ms"
    )
    print(
        f"collect cycle: cpu p50={pct(cpu, 0.5) * ms:.1f}ms max={max(cpu) * ms:.1f}ms; "
        f"wall p50={pct(wall, 0.5) * ms:.1f}ms (n={args.cycles}, clock state saved each cycle)"
    )
    print(f"docker calls during scrapes: {inspect_calls['n'] - calls_before}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
