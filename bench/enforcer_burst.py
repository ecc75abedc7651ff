"""Burst benchmark for the enforcer: ack latency and action throughput against a real dockerd.

    .venv/bin/python bench/enforcer_burst.py [--containers 50] [--alerts 1000] [--posts 200]

Starts a private dockerd, a Prometheus scraping a series server that says every container is
past its idle deadline, and `ds01 enforcer` as a child process. Then:
  1. one webhook with --alerts alerts (spread over the containers, distinct fingerprints);
  2. --posts concurrent webhooks of 5 alerts each (half new, half repeats of step 1).
Prints ack latency p50/p99 (over all posts), decisions and stops per second, and checks that
no alert was lost (one audit record per distinct alert) and no container was stopped twice.
Target: ack p99 under 100 ms, no alert lost, no double action.
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import docker
import requests
from docker.types import DeviceRequest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ds01.stack import (  # noqa: E402
    ChildProcess,
    ensure_busybox_image,
    free_port,
    start_dockerd,
    start_prometheus,
)
from enforcer.audit import read_audit  # noqa: E402
from tests.enforcer.series import (  # noqa: E402
    ContainerSeries,
    SeriesServer,
    prometheus_config,
    prometheus_has,
)

TOKEN = "bench-token"
GPU = "MIG-bench-0000"


def iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1e6):06d}Z"


def alert(container, fingerprint: str, starts_at: float) -> dict:
    return {
        "status": "firing",
        "labels": {
            "alertname": "GPUContainerIdle",
            "action": "stop",
            "reason": "idle",
            "container_id": container.id,
            "container": container.name,
            "user": "alice",
        },
        "annotations": {"summary": f"{container.name} idle"},
        "startsAt": iso(starts_at),
        "fingerprint": fingerprint,
    }


def webhook(alerts: list[dict]) -> dict:
    return {"version": "4", "status": "firing", "receiver": "enforcer", "alerts": alerts}


def wait(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise SystemExit(f"timed out waiting for {what}")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--containers", type=int, default=50, help="containers (default 50)")
    parser.add_argument("--alerts", type=int, default=1000, help="alerts in one webhook (1000)")
    parser.add_argument("--posts", type=int, default=200, help="concurrent webhooks (200)")
    parser.add_argument("--workers", type=int, default=4, help="enforcer workers (default 4)")
    parser.add_argument(
        "--enforcer-arg",
        action="append",
        default=[],
        help="extra flag for ds01 enforcer, e.g. --enforcer-arg=--threads=32 (repeatable)",
    )
    args = parser.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="ds01b-", dir="/tmp"))
    started: list = []
    series = SeriesServer()
    try:
        print(f"starting dockerd, Prometheus and the enforcer under {root}", flush=True)
        engine = start_dockerd(root / "d")
        started.append(engine)
        client = docker.DockerClient(base_url=engine.url, timeout=120)
        image = ensure_busybox_image(client)
        prometheus = start_prometheus(root / "prom", prometheus_config(series.target))
        started.append(prometheus)

        t0 = time.monotonic()
        boxes = []
        for n in range(args.containers):
            boxes.append(
                client.containers.run(
                    image,
                    ["sleep", "3600"],
                    name=f"burst-{n}-{uuid.uuid4().hex[:6]}",
                    network_mode="none",
                    detach=True,
                    device_requests=[DeviceRequest(device_ids=[GPU], capabilities=[["gpu"]])],
                )
            )
        print(f"created {len(boxes)} containers in {time.monotonic() - t0:.1f}s", flush=True)
        now = time.time()
        for box in boxes:
            series.set(ContainerSeries(box.id, name=box.name, idle=now - 600, runtime=now + 1e5))
        last = boxes[-1].id
        wait(
            lambda: prometheus_has(prometheus.url, f'{{container_id="{last}"}}'),
            60,
            "Prometheus to scrape the series",
        )

        token_file = root / "token"
        token_file.write_text(TOKEN)
        token_file.chmod(0o600)
        policy = root / "policy.yaml"
        policy.write_text("stop_grace: 0s\n")
        port = free_port()
        enforcer = ChildProcess(
            "enforcer",
            [
                sys.executable,
                "-m",
                "ds01.cli",
                "enforcer",
                "--policy",
                str(policy),
                "--state-dir",
                str(root / "state"),
                "--listen",
                f"127.0.0.1:{port}",
                "--docker-host",
                engine.url,
                "--token-file",
                str(token_file),
                "--prometheus-url",
                prometheus.url,
                "--workers",
                str(args.workers),
                "--log-level",
                "WARNING",
            ],  # fmt: skip
            root / "enforcer.log",
            cwd=REPO,
        ).start()
        started.append(enforcer)
        url = f"http://127.0.0.1:{port}"
        enforcer.wait_until(lambda: requests.get(f"{url}/healthz", timeout=1).ok, 60, "ready")

        starts_at = time.time()
        first = [alert(boxes[i % len(boxes)], f"burst-{i}", starts_at) for i in range(args.alerts)]
        posts = []
        for j in range(args.posts):
            batch = [alert(boxes[(j + k) % len(boxes)], f"post-{j}-{k}", starts_at) for k in (0, 1)]
            batch += [first[(j * 3 + k) % len(first)] for k in range(3)]  # repeats
            posts.append(batch)
        distinct = {a["fingerprint"] for a in first} | {a["fingerprint"] for p in posts for a in p}

        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
        bodies = [json.dumps(webhook(alerts)).encode() for alerts in posts]
        gate = threading.Barrier(len(bodies))

        def post(body: bytes) -> tuple[float, int]:
            """One webhook on its own connection, as Alertmanager sends it (light client)."""
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            connection.connect()
            gate.wait()  # all posts leave together
            begin = time.perf_counter()
            connection.request("POST", "/alerts", body=body, headers=headers)
            status = connection.getresponse().status
            elapsed = time.perf_counter() - begin
            connection.close()
            return elapsed, status

        t_start = time.monotonic()
        begin = time.perf_counter()
        big = requests.post(f"{url}/alerts", data=json.dumps(webhook(first)), headers=headers)
        big_latency = time.perf_counter() - begin
        with ThreadPoolExecutor(max_workers=len(bodies)) as pool:
            results = list(pool.map(post, bodies))
        latencies = [r[0] for r in results]
        codes = Counter(r[1] for r in results)

        def drained() -> bool:
            return len(read_audit(root / "state" / "enforcer-audit.jsonl")) >= len(distinct)

        wait(drained, 600, "every alert to be decided")
        elapsed = time.monotonic() - t_start
        records = read_audit(root / "state" / "enforcer-audit.jsonl")
        decided = Counter(r["fingerprint"] for r in records)
        stops = Counter(r["container_id"] for r in records if r["decision"] == "stopped")
        lost = distinct - set(decided)
        twice = [f for f, n in decided.items() if n > 1]
        double_stops = [c for c, n in stops.items() if n > 1]
        running = [b.name for b in boxes if client.containers.get(b.id).status == "running"]

        p50, p99 = statistics.median(latencies), percentile(latencies, 0.99)
        rate, stop_rate = len(records) / elapsed, len(stops) / elapsed
        big_ms = big_latency * 1e3
        print(f"big webhook: {len(first)} alerts, HTTP {big.status_code}, ack {big_ms:.1f} ms")
        print(f"{len(posts)} concurrent webhooks: HTTP {dict(codes)}")
        worst = max(latencies) * 1e3
        print(f"  ack p50 {p50 * 1e3:.1f} ms, p99 {p99 * 1e3:.1f} ms, max {worst:.1f} ms")
        print(f"{len(records)} decisions ({len(stops)} stops) in {elapsed:.1f}s")
        print(f"  {rate:.1f} decisions/s, {stop_rate:.1f} stops/s")
        kinds = Counter(r["decision"].split(" (")[0] for r in records)
        print("decisions: " + ", ".join(f"{n} {d}" for d, n in kinds.most_common()))
        print(f"alerts lost: {len(lost)}; decided twice: {len(twice)}")
        print(f"containers stopped twice: {len(double_stops)}; still running: {len(running)}")
        ok = not lost and not twice and not double_stops and not running and p99 < 0.1
        print("target met" if ok else "target NOT met")
        return 0 if ok else 1
    finally:
        for component in reversed(started):
            component.stop()
        series.close()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
