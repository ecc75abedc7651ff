"""Exporter scrape benchmark: 500 GPU containers, 56 devices; scrape latency and cycle CPU time.

Containers reach the collector through `Inventory.apply_event` (the events-stream path) with
synthetic `docker inspect` answers; GPUs come from the sim backend (8 H200 x 7 MIG 1g.18gb).
The scrape goes over HTTP to the real waitress/Flask app. Run:

    .venv/bin/python bench/exporter_scrape.py [--containers 500] [--scrapes 500]
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests
from prometheus_client import CollectorRegistry, generate_latest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ds01.gpu.sim import SimBackend, SimStateFile
from ds01.policy import default_policy
from exporter.clocks import ClockStore
from exporter.collector import Collector
from exporter.exposition import Exposition
from exporter.health import ErrorCounters
from exporter.inventory import Inventory
from exporter.keepalive import KeepAliveChecker
from exporter.metrics import SnapshotCollector
from exporter.server import HttpServer, make_app
from exporter.snapshot import snapshot_json

PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;"
    "version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
)
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
    metrics = SnapshotCollector(
        lambda: collector.snapshot, errors, version="bench", backend=backend.name
    )
    exposition = Exposition(metrics.health_metrics)
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
        on_publish=exposition.prepare,  # as the service wires it: render once per snapshot
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

    prepare = []
    for _ in range(5):
        started = time.thread_time()
        exposition.prepare(snap)
        prepare.append(time.thread_time() - started)

    registry = CollectorRegistry()
    registry.register(metrics)
    render = []
    for _ in range(20):
        started = time.perf_counter()
        body = generate_latest(registry)
        render.append(time.perf_counter() - started)

    app = make_app(
        lambda accept, encoding: exposition.render(collector.snapshot, accept, encoding),
        lambda: snapshot_json(collector.snapshot),
        lambda: (True, {}),
    )
    server = HttpServer(app, "127.0.0.1", 0)
    server.start()
    url = f"http://127.0.0.1:{server.port}/metrics"
    calls_before = inspect_calls["n"]
    results = {}
    with requests.Session() as session:
        for label, headers in (
            ("as Prometheus asks (openmetrics, gzip)", {"Accept": PROMETHEUS_ACCEPT}),
            ("plain text, no compression", {"Accept-Encoding": "identity"}),
        ):
            latencies, sizes = [], []
            for i in range(args.scrapes + 10):
                if i == args.scrapes // 2:
                    collector.collect_once()  # a new snapshot mid-run, as in production
                started = time.perf_counter()
                response = session.get(url, headers=headers, timeout=10, stream=True)
                raw = response.raw.read()
                if i >= 10:
                    latencies.append(time.perf_counter() - started)
                    sizes.append(len(raw))
            results[label] = (latencies, sizes)
    server.close()
    assert inspect_calls["n"] == calls_before, "a scrape must not call Docker"

    series = sum(1 for line in body.decode().splitlines() if line and not line.startswith("#"))
    ms = 1000.0
    print(f"containers={args.containers} devices={len(devices)} series={series}")
    for label, (latencies, sizes) in results.items():
        print(
            f"scrape over HTTP, {label}: p50={pct(latencies, 0.5) * ms:.1f}ms "
            f"p99={pct(latencies, 0.99) * ms:.1f}ms max={max(latencies) * ms:.1f}ms "
            f"bytes={statistics.median(sizes):.0f} (n={len(latencies)})"
        )
    print(
        f"for comparison, rendering everything per scrape (generate_latest): "
        f"p50={pct(render, 0.5) * ms:.1f}ms p99={pct(render, 0.99) * ms:.1f}ms"
    )
    print(
        f"collect cycle: cpu p50={pct(cpu, 0.5) * ms:.1f}ms max={max(cpu) * ms:.1f}ms; "
        f"wall p50={pct(wall, 0.5) * ms:.1f}ms (n={args.cycles}; includes saving the clock "
        "state and pre-rendering /metrics)"
    )
    print(
        "  of which pre-rendering /metrics (openmetrics + gzip): "
        f"cpu p50={pct(prepare, 0.5) * ms:.1f}ms"
    )
    print(f"docker calls during scrapes: {inspect_calls['n'] - calls_before}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
