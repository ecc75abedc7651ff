"""Exporter benchmark: collect cycles and scrapes at 500 GPU containers and 56 devices.

Containers reach the collector through `Inventory.apply_event` (the events-stream path) with
synthetic `docker inspect` answers; GPUs come from the sim backend (8 H200 x 7 MIG 1g.18gb),
half of them busy. Half the containers have their `/workspace` on this host; the other half's
keep-alive file is read through the Docker archive API (the real SDK call) against a stand-in
endpoint. The collector runs on a clock advanced 5 s per cycle, three simulated minutes, so
keep-alive reads come due as in production. Scrapes go over HTTP to the real waitress/Flask
app. Goals (issue 16): <= 25 ms CPU per cycle; no cycle over 2x the median; the duration
metric covers the whole cycle; scrape p99 <= 5 ms with gzip and with plain text.

    .venv/bin/python bench/exporter_scrape.py [--containers 500] [--scrapes 500] [--cycles 36]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import multiprocessing
import shutil
import statistics
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import docker
import requests
from prometheus_client import CollectorRegistry, generate_latest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.goals import Goal, percentile, report
from ds01.clock import FrozenClock
from ds01.gpu.sim import SimBackend, SimStateFile
from ds01.policy import default_policy
from exporter.clocks import ClockStore
from exporter.collector import Collector
from exporter.exposition import Exposition
from exporter.health import ErrorCounters
from exporter.inventory import Inventory
from exporter.keepalive import KeepAliveChecker, docker_archive_stat
from exporter.metrics import SnapshotCollector
from exporter.server import HttpServer, make_app
from exporter.snapshot import snapshot_json

NAME = "exporter"
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


pct = percentile


class ArchiveEndpoint(BaseHTTPRequestHandler):
    """Stands in for dockerd's `HEAD /containers/{id}/archive` (the keep-alive stat)."""

    protocol_version = "HTTP/1.1"  # keep-alive, as dockerd

    stat = base64.b64encode(
        json.dumps({"name": ".keep-alive", "mtime": "2026-01-01T00:00:00Z"}).encode()
    ).decode()
    calls = 0

    def do_HEAD(self) -> None:
        type(self).calls += 1
        self.send_response(200)
        self.send_header("X-Docker-Container-Path-Stat", self.stat)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def archive_endpoint() -> tuple[ThreadingHTTPServer, docker.DockerClient]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), ArchiveEndpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"tcp://127.0.0.1:{server.server_address[1]}"
    return server, docker.DockerClient(base_url=url, version="1.41", timeout=10)


def cycles(collector: Collector, clock: FrozenClock, count: int, step: float) -> list[tuple]:
    """(cpu, wall, published duration, archive reads) of `count` cycles, `step` s apart."""
    out = []
    for _ in range(count):
        clock.advance(step)
        reads = ArchiveEndpoint.calls
        started = time.perf_counter()
        assert collector.collect_once()
        wall = time.perf_counter() - started
        assert collector.snapshot is not None
        out.append(
            (collector.last_cycle_cpu_seconds, wall, collector.snapshot.duration,
             ArchiveEndpoint.calls - reads)
        )  # fmt: skip
    return out


def _scrape_client(url: str, count: int, out) -> None:
    """Prometheus's part, in its own process: `count` scrapes per format, timed."""
    results = {}
    with requests.Session() as session:
        for label, headers in (
            ("gzip", {"Accept": PROMETHEUS_ACCEPT}),
            ("plain text", {"Accept-Encoding": "identity"}),
        ):
            latencies, sizes = [], []
            for i in range(count + 10):
                started = time.perf_counter()
                response = session.get(url, headers=headers, timeout=10, stream=True)
                raw = response.raw.read()
                if i >= 10:
                    latencies.append(time.perf_counter() - started)
                    sizes.append(len(raw))
            results[label] = (latencies, sizes)
    out.send(results)


def scrapes(url: str, collector: Collector, clock: FrozenClock, count: int) -> dict:
    """Scrapes from another process while the collector publishes at its production pace."""
    ours, theirs = multiprocessing.get_context("fork").Pipe()
    client = multiprocessing.get_context("fork").Process(
        target=_scrape_client, args=(url, count, theirs)
    )
    client.start()
    while not ours.poll(collector.interval):
        clock.advance(collector.interval)
        collector.collect_once()
    results = ours.recv()
    client.join(10)
    return results


def static_scrapes(exposition: Exposition, collector: Collector, count: int) -> dict:
    """The comparison point: the same bodies, fixed, from an app on the same server class."""
    bodies = {
        encoding: exposition.render(collector.snapshot, PROMETHEUS_ACCEPT, encoding)
        for encoding in ("gzip", None)
    }
    app = make_app(
        lambda accept, encoding: bodies["gzip" if encoding and "gzip" in encoding else None],
        lambda: {},
        lambda: (True, {}),
    )
    server = HttpServer(app, "127.0.0.1", 0)
    server.start()
    try:
        ours, theirs = multiprocessing.get_context("fork").Pipe()
        url = f"http://127.0.0.1:{server.port}/metrics"
        client = multiprocessing.get_context("fork").Process(
            target=_scrape_client, args=(url, count, theirs)
        )
        client.start()
        results = ours.recv()
        client.join(10)
    finally:
        server.close()
    return results


def build(work: Path, containers: int, *, on_host: bool, archive_stat) -> tuple:
    """Collector, exposition, metrics, clock and the inspect counter for one scenario."""
    (work / "topology.yaml").write_text(TOPOLOGY)
    state = SimStateFile(work / "sim.json")
    backend = SimBackend.from_files(work / "topology.yaml", state.path)
    devices = backend.devices()
    for i, device in enumerate(devices):  # half busy, each with a few (foreign) host PIDs
        state.set_device(device.device_uuid, busy=i % 2 == 0, pids=[10_000_000 + i, 20_000_000 + i])
    docs = {}
    for n in range(containers):
        workspace = work / f"ws{n}"
        if on_host or n % 2 == 0:  # else: /workspace not on this host (archive API)
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
    holder: dict = {}
    metrics = SnapshotCollector(
        lambda: holder["collector"].snapshot, errors, version="bench", backend=backend.name
    )
    exposition = Exposition(metrics.health_metrics)
    clock = FrozenClock(time.time())
    collector = Collector(
        backend=backend,
        inventory=inventory,
        policy=policy,
        keepalive=KeepAliveChecker(
            path=policy.keep_alive.path, archive_stat=archive_stat, interval=60, errors=errors
        ),
        errors=errors,
        store=ClockStore(work / "state"),
        clock=clock,
        interval=5.0,
        on_publish=exposition.prepare,  # as the service wires it: render once per snapshot
    )
    holder["collector"] = collector
    return collector, exposition, metrics, clock, inspect_calls, errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--containers", type=int, default=500)
    parser.add_argument("--scrapes", type=int, default=500)
    parser.add_argument("--cycles", type=int, default=36, help="5-second cycles (36 = 3 min)")
    args = parser.parse_args(argv)
    ms = 1000.0
    root = Path(tempfile.mkdtemp(prefix="ds01-bench-"))
    endpoint, docker_client = archive_endpoint()
    try:
        # 1. Every /workspace on this host: the cost of a cycle when nothing else happens.
        (root / "a").mkdir()
        collector, exposition, metrics, clock, inspect_calls, errors = build(
            root / "a", args.containers, on_host=True, archive_stat=None
        )
        cycles(collector, clock, 3, 5.0)  # warm-up
        steady = cycles(collector, clock, args.cycles, 5.0)
        snap = collector.snapshot
        assert snap is not None and len(snap.containers) == args.containers

        registry = CollectorRegistry()
        registry.register(metrics)
        started = time.perf_counter()
        body = generate_latest(registry)
        whole = time.perf_counter() - started
        app = make_app(
            lambda accept, encoding: exposition.render(collector.snapshot, accept, encoding),
            lambda: snapshot_json(collector.snapshot),
            lambda: (True, {}),
        )
        server = HttpServer(app, "127.0.0.1", 0)
        server.start()
        calls_before = inspect_calls["n"]
        try:
            url = f"http://127.0.0.1:{server.port}/metrics"
            results = scrapes(url, collector, clock, args.scrapes)
        finally:
            server.close()
        assert inspect_calls["n"] == calls_before, "a scrape must not call Docker"
        reference = static_scrapes(exposition, collector, args.scrapes)

        # 2. Half the containers read keep-alive through the archive API.
        (root / "b").mkdir()
        collector, _, _, clock, _, errors = build(
            root / "b", args.containers, on_host=False,
            archive_stat=docker_archive_stat(lambda: docker_client),
        )  # fmt: skip
        first = cycles(collector, clock, 1, 0.0)[0]  # start-up: every archive read at once
        spread_cycles = cycles(collector, clock, args.cycles, 5.0)
        assert errors.values().get("keepalive", 0) == 0, errors.values()
    finally:
        endpoint.shutdown()
        shutil.rmtree(root, ignore_errors=True)

    cpu = [c[0] for c in steady]
    wall = [c[1] for c in steady]
    honest = [c[2] / c[1] for c in steady]
    series = sum(1 for line in body.decode().splitlines() if line and not line.startswith("#"))
    print(f"containers={args.containers} devices=56 series={series}")
    print(f"1. {len(steady)} cycles 5 s apart, every /workspace on this host: cpu p50 "
          f"{pct(cpu, 0.5) * ms:.1f} ms, max {max(cpu) * ms:.1f} ms; wall p50 "
          f"{pct(wall, 0.5) * ms:.1f} ms (rendering everything once instead: "
          f"{whole * ms:.1f} ms)")  # fmt: skip
    for label, (latencies, sizes) in results.items():
        print(f"   scrape over HTTP from another process, {label}: p50 "
              f"{pct(latencies, 0.5) * ms:.1f} ms, p99 {pct(latencies, 0.99) * ms:.1f} ms, max "
              f"{max(latencies) * ms:.1f} ms, {statistics.median(sizes):.0f} bytes "
              f"(n={len(latencies)}, a new snapshot every 5 s)")  # fmt: skip
        fixed = reference[label][0]
        print(f"     the same body, fixed, from the same server (no collector): p50 "
              f"{pct(fixed, 0.5) * ms:.1f} ms, p99 {pct(fixed, 0.99) * ms:.1f} ms")  # fmt: skip
    walls = [c[1] for c in spread_cycles]
    cpus = [c[0] for c in spread_cycles]
    reads = [c[3] for c in spread_cycles]
    print(f"2. {args.containers // 2} containers read keep-alive through the archive API: "
          f"start-up cycle ({first[3]} reads) cpu {first[0] * ms:.1f} ms, wall "
          f"{first[1] * ms:.1f} ms (not counted); {len(walls)} cycles after: cpu p50 "
          f"{pct(cpus, 0.5) * ms:.1f} ms, max {max(cpus) * ms:.1f} ms; wall p50 "
          f"{pct(walls, 0.5) * ms:.1f} ms, max {max(walls) * ms:.1f} ms; reads per cycle "
          f"{min(reads)}..{max(reads)}")  # fmt: skip
    cpu50 = pct(cpu, 0.5)
    report(Goal(NAME, "collect CPU per cycle when nothing changed (500 containers)",
                f"p50 {cpu50 * ms:.1f} ms, max {max(cpu) * ms:.1f} ms", "<= 25 ms",
                cpu50 <= 0.025))  # fmt: skip
    covered = pct(honest, 0.5)
    report(Goal(NAME, "collect_duration metric vs the measured cycle",
                f"p50 {covered:.2f} of the cycle's wall time", ">= 0.95",
                covered >= 0.95))  # fmt: skip
    # Judged on CPU time: on a shared machine a cycle's wall time mostly measures the neighbours.
    spread = max(cpus) / pct(cpus, 0.5)
    report(Goal(NAME, f"keep-alive reads spread ({args.containers // 2} via archive API): "
                "costliest cycle vs median, CPU",
                f"{max(cpus) * ms:.1f} vs {pct(cpus, 0.5) * ms:.1f} ms ({spread:.2f}x); "
                f"{max(reads)} reads at most in a cycle", "<= 2x", spread <= 2.0))  # fmt: skip
    for label, (latencies, _) in results.items():
        p99 = pct(latencies, 0.99)
        fixed = pct(reference[label][0], 0.99)
        report(Goal(NAME, f"scrape p99, {label}",
                    f"{p99 * ms:.1f} ms (a fixed body from the same server: {fixed * ms:.1f} ms)",
                    "<= 5 ms", p99 <= 0.005))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
