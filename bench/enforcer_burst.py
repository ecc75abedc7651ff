"""Burst benchmark for the enforcer: ack latency against an empty app, and action throughput.

    .venv/bin/python bench/enforcer_burst.py [--containers 50] [--alerts 1000] [--posts 200]

Starts a private dockerd, a Prometheus scraping a series server that says every container is
past its idle deadline, `ds01 enforcer` as a child process, and an empty Flask app served by
waitress with the enforcer's server settings (the comparison point). Against each, the same
client sends:
  1. one webhook with --alerts alerts (spread over the containers, distinct fingerprints);
  2. --posts concurrent webhooks of 5 alerts each (2 new, 3 repeats of step 1), while the
     enforcer's workers are busy with step 1.
Goal (issue 16): ack p99 over all those webhooks <= 2x the empty app's, no alert lost, none
decided twice, no container stopped twice. Both bursts are repeated for --rounds rounds (fresh
alerts, the containers started again), and the goal is judged on the median round: on a shared
machine one pair of bursts swings from 1.3x to 3.5x with the neighbours' load alone.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import docker
import requests
from docker.types import DeviceRequest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.goals import Goal, percentile, report  # noqa: E402
from ds01.stack import (  # noqa: E402
    ChildProcess,
    ensure_busybox_image,
    free_port,
    start_dockerd,
    start_prometheus,
)
from enforcer.audit import read_audit  # noqa: E402
from enforcer.facts import IDLE_SERIES  # noqa: E402
from tests.enforcer.series import (  # noqa: E402
    ContainerSeries,
    SeriesServer,
    prometheus_config,
    prometheus_has,
)

TOKEN = "bench-token"
HTTP_THREADS = 32  # `ds01 enforcer --threads` default (enforcer.service.HTTP_THREADS)
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


def serve_empty(port: int, threads: int) -> None:
    """An empty Flask app with the enforcer's waitress settings: reads the body, answers 200."""
    import waitress
    from flask import Flask, jsonify, request

    app = Flask("empty")

    @app.post("/alerts")
    def alerts():
        request.get_data(cache=False)
        return jsonify({"accepted": 0})

    @app.get("/healthz")
    def healthz():
        return jsonify({"status": "ok"})

    waitress.create_server(
        app, host="127.0.0.1", port=port, threads=threads, connection_limit=1000
    ).run()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def burst(port: int, big_body: bytes, bodies: list[bytes]) -> tuple[list[float], float, Counter]:
    """The big webhook, then every body at once; (ack seconds of all, of the big one, codes)."""
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    gate = threading.Barrier(len(bodies))

    def post(body: bytes, wait: bool = True) -> tuple[float, int]:
        """One webhook on its own connection, as Alertmanager sends it (light client)."""
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        connection.connect()
        if wait:
            gate.wait()  # all posts leave together
        begin = time.perf_counter()
        connection.request("POST", "/alerts", body=body, headers=headers)
        response = connection.getresponse()
        response.read()
        elapsed = time.perf_counter() - begin
        connection.close()
        return elapsed, response.status

    big, big_code = post(big_body, wait=False)
    with ThreadPoolExecutor(max_workers=len(bodies)) as pool:
        results = list(pool.map(post, bodies))
    codes = Counter([big_code, *(r[1] for r in results)])
    return [big, *(r[0] for r in results)], big, codes


@dataclass(frozen=True)
class Round:
    """One round: the same webhooks to the empty app, then to the enforcer, and what it did."""

    ratio: float
    p99: float
    base_p99: float
    big: float
    base_big: float
    codes_ok: bool
    lost: int
    twice: int
    double_stops: int
    running: int

    @property
    def sound(self) -> bool:
        return not (self.lost or self.twice or self.double_stops or self.running)


def one_round(
    tag: str, args, *, boxes: list, client, state: Path, enforcer: tuple, empty: tuple
) -> Round:
    """Fresh alerts (fingerprints prefixed with `tag`) for running containers; both bursts."""
    (enforcer_pid, port), (empty_pid, empty_port) = enforcer, empty
    starts_at = time.time()
    first = [
        alert(boxes[i % len(boxes)], f"{tag}-burst-{i}", starts_at) for i in range(args.alerts)
    ]
    posts = []
    for j in range(args.posts):
        batch = [
            alert(boxes[(j + k) % len(boxes)], f"{tag}-post-{j}-{k}", starts_at) for k in (0, 1)
        ]
        batch += [first[(j * 3 + k) % len(first)] for k in range(3)]  # repeats
        posts.append(batch)
    distinct = {a["fingerprint"] for a in first} | {a["fingerprint"] for p in posts for a in p}
    bodies = [json.dumps(webhook(alerts)).encode() for alerts in posts]
    big_body = json.dumps(webhook(first)).encode()

    cpu = cpu_seconds(empty_pid)
    base, base_big, _ = burst(empty_port, big_body, bodies)
    base_cpu = cpu_seconds(empty_pid) - cpu
    t_start = time.monotonic()
    cpu = cpu_seconds(enforcer_pid)
    latencies, big_latency, codes = burst(port, big_body, bodies)
    burst_cpu = cpu_seconds(enforcer_pid) - cpu
    ms = 1e3
    p99, b99 = percentile(latencies, 0.99), percentile(base, 0.99)
    print(f"round {tag} (load {os.getloadavg()[0]:.1f}): server CPU during the burst: enforcer "
          f"{burst_cpu * ms:.0f} ms, empty app {base_cpu * ms:.0f} ms", flush=True)  # fmt: skip
    if args.intake_only:
        print(f"intake only (workers held): p99 {p99 * ms:.1f} ms vs empty {b99 * ms:.1f} ms "
              f"({p99 / b99:.2f}x)")  # fmt: skip
        return Round(p99 / b99, p99, b99, big_latency, base_big, set(codes) == {200}, 0, 0, 0, 0)

    def decisions() -> list[dict]:  # a stop deferred for its warning is not a decision
        return [
            r
            for r in read_audit(state / "enforcer-audit.jsonl")
            if r["fingerprint"] in distinct and not r["decision"].startswith("deferred:")
        ]

    wait(lambda: len(decisions()) >= len(distinct), 600, "every alert to be decided")
    elapsed = time.monotonic() - t_start
    records = decisions()
    decided = Counter(r["fingerprint"] for r in records)
    stops = Counter(r["container_id"] for r in records if r["decision"] == "stopped")
    running = [b.name for b in boxes if client.containers.get(b.id).status == "running"]
    print(
        f"  empty app:  big webhook ack {base_big * ms:.1f} ms; all acks p50 "
        f"{statistics.median(base) * ms:.1f} ms, p99 {b99 * ms:.1f} ms, max {max(base) * ms:.1f} ms"
    )
    print(
        f"  enforcer:   big webhook ({len(first)} alerts) ack {big_latency * ms:.1f} ms; "
        f"all acks p50 {statistics.median(latencies) * ms:.1f} ms, p99 {p99 * ms:.1f} ms, "
        f"max {max(latencies) * ms:.1f} ms ({p99 / b99:.2f}x); HTTP {dict(codes)}"
    )
    kinds = Counter(r["decision"].split(" (")[0] for r in records)
    print(
        f"  {len(records)} decisions ({len(stops)} stops) in {elapsed:.1f}s: "
        f"{len(records) / elapsed:.1f} decisions/s; "
        + ", ".join(f"{n} {d}" for d, n in kinds.most_common())
    )
    return Round(
        ratio=p99 / b99, p99=p99, base_p99=b99, big=big_latency, base_big=base_big,
        codes_ok=set(codes) == {200}, lost=len(distinct - set(decided)),
        twice=sum(1 for n in decided.values() if n > 1),
        double_stops=sum(1 for n in stops.values() if n > 1), running=len(running),
    )  # fmt: skip


def summarize(rounds: list[Round], args) -> int:
    """The goal on the median round (each round's ratio printed): one pair of bursts is at the
    mercy of whatever else the machine does in that second."""
    ms = 1e3
    middle = sorted(rounds, key=lambda r: r.ratio)[len(rounds) // 2]
    each = ", ".join(f"{r.ratio:.2f}x" for r in rounds)
    report(
        Goal(
            "enforcer",
            f"ack p99, 1 webhook of {args.alerts} + {args.posts} concurrent, vs empty app "
            f"(median of {len(rounds)} rounds)",
            f"{middle.p99 * ms:.1f} vs {middle.base_p99 * ms:.1f} ms ({middle.ratio:.2f}x; "
            f"rounds {each}); big webhook {middle.big * ms:.1f} vs {middle.base_big * ms:.1f} ms",
            "<= 2x",
            middle.ratio <= 2.0 and all(r.codes_ok for r in rounds),
        )
    )
    lost, twice = sum(r.lost for r in rounds), sum(r.twice for r in rounds)
    double, running = sum(r.double_stops for r in rounds), sum(r.running for r in rounds)
    sound = all(r.sound for r in rounds)
    report(
        Goal(
            "enforcer",
            "every alert decided once, no container stopped twice (all rounds)",
            f"{lost} lost, {twice} decided twice, {double} stopped twice in a round, "
            f"{running} left running",
            "all 0",
            sound,
        )
    )
    return 0 if sound else 1


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
    parser.add_argument(
        "--intake-only",
        action="store_true",
        help="hold the workers (--action-delay 1h) and measure the acks alone",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds of both bursts, each with fresh alerts for restarted containers; the goal "
        "is judged on the median round (default 3)",
    )
    parser.add_argument("--serve-empty", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument(
        "--threads", type=int, default=HTTP_THREADS,
        help=f"HTTP threads of the enforcer and of the empty app alike ({HTTP_THREADS})",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.serve_empty:
        serve_empty(args.serve_empty, args.threads)
        return 0
    if args.intake_only:
        args.enforcer_arg.append("--action-delay=1h")

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
        # idle_warning 0s: the burst's alerts are idle stops, and each container's first one is
        # deferred once to warn first (issue 13); with 0s the stop follows on the next pass.
        policy.write_text("stop_grace: 0s\nidle_warning: 0s\n")
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
                f"--threads={args.threads}",
                *args.enforcer_arg,
            ],  # fmt: skip
            root / "enforcer.log",
            cwd=REPO,
        ).start()
        started.append(enforcer)
        url = f"http://127.0.0.1:{port}"
        enforcer.wait_until(lambda: requests.get(f"{url}/healthz", timeout=1).ok, 60, "ready")

        empty_port = free_port()
        empty = ChildProcess(
            "empty app",
            [
                sys.executable,
                __file__,
                "--serve-empty",
                str(empty_port),
                "--threads",
                str(args.threads),
            ],  # fmt: skip
            root / "empty.log",
            cwd=REPO,
        ).start()
        started.append(empty)
        empty_url = f"http://127.0.0.1:{empty_port}"
        empty.wait_until(lambda: requests.get(f"{empty_url}/healthz", timeout=1).ok, 60, "ready")

        rounds = []
        for number in range(args.rounds):
            if number:  # the enforcer stopped them all: start them again for the next round
                for box in boxes:
                    box.start()
                restarted = time.time()  # an idle stop needs facts measured after the start
                scraped = f'timestamp({IDLE_SERIES}{{container_id="{last}"}}) > {restarted}'
                wait(lambda q=scraped: prometheus_has(prometheus.url, q), 60, "a scrape after it")
            rounds.append(
                one_round(
                    f"r{number}", args, boxes=boxes, client=client, state=root / "state",
                    enforcer=(enforcer.pid, port), empty=(empty.pid, empty_port),
                )
            )  # fmt: skip
            if args.intake_only:
                return 0
        return summarize(rounds, args)
    finally:
        for component in reversed(started):
            component.stop()
        series.close()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
