"""Allocator load benchmark: grants/s and p99 latency with free capacity, release-to-grant.

Runs a real allocator (`ds01 allocator`: waitress on a Unix socket, SQLite WAL, sim inventory)
as a child process and drives it through the same client the wrapper uses, one client
process per worker. Targets (issue 6): >= 300 grants/s, p99 grant latency < 20 ms,
release-to-grant < 100 ms.

    .venv/bin/python bench/allocator_load.py [--seconds 5] [--workers 4] [--strict]
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml

from allocator.client import AllocatorClient
from ds01.stack import ChildProcess


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def topology(folder: Path, gpus: int) -> Path:
    layout = ["3g.71gb", "2g.35gb", "1g.18gb", "1g.18gb"]
    data = {
        "seed": "bench",
        "gpus": [
            {"mig": [{"profile": p, "gi_id": 2 + i, "mig_index": i} for i, p in enumerate(layout)]}
            for _ in range(gpus)
        ],
    }
    path = folder / "topology.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _worker(sock: str, me: str, stop_at: float) -> list[float]:
    """One client process (as real users are): allocate, release, until `stop_at`."""
    client = AllocatorClient(sock)
    mine: list[float] = []
    while time.time() < stop_at:
        began = time.perf_counter()
        alloc = client.allocate(user=me)
        mine.append(time.perf_counter() - began)
        client.call("DELETE", f"/v1/allocations/{alloc['id']}?user={me}")
    return mine


def throughput(sock: str, seconds: float, workers: int) -> tuple[int, list[float]]:
    stop_at = time.time() + seconds
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        parts = pool.starmap(_worker, [(sock, f"bench{i}", stop_at) for i in range(workers)])
    latencies = [value for part in parts for value in part]
    return len(latencies), latencies


def release_to_grant(client: AllocatorClient, rounds: int) -> list[float]:
    """All 3g.71gb instances held, one waiter queued; time from a release to its grant."""
    size = sum(1 for d in client.devices() if d["profile"] == "3g.71gb")
    held = [client.allocate(user=f"holder{i}", profile="3g.71gb") for i in range(size)]
    results = []
    for turn in range(rounds):
        granted: dict = {}
        done = threading.Event()
        user = f"waiter{turn}"

        def wait(granted: dict = granted, done: threading.Event = done, user: str = user) -> None:
            granted["alloc"] = client.allocate(user=user, profile="3g.71gb", poll=5.0)
            granted["at"] = time.perf_counter()
            done.set()

        thread = threading.Thread(target=wait)
        thread.start()
        while not client.call("GET", "/healthz")[1].get("queue_length"):
            time.sleep(0.005)
        time.sleep(0.05)  # the waiter is inside its long poll
        victim = held.pop(0)
        released_at = time.perf_counter()
        client.call("DELETE", f"/v1/allocations/{victim['id']}?user={victim['user']}")
        done.wait(10)
        thread.join()
        results.append(granted["at"] - released_at)
        held.append(granted["alloc"])
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="throughput phase (5)")
    parser.add_argument("--workers", type=int, default=4, help="concurrent client processes (4)")
    parser.add_argument("--rounds", type=int, default=20, help="release-to-grant rounds (20)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="ds01-allocbench-", dir="/tmp"))
    policy = {
        "gpu_wait": "30s",
        "default_group": "admin",
        "groups": {"admin": {"max_gpus": None, "allow_full_gpu": True}},
    }
    (folder / "ds01.yaml").write_text(yaml.safe_dump(policy))
    sock = folder / "s.sock"
    argv = [
        sys.executable, "-m", "ds01.cli", "allocator", "--policy", str(folder / "ds01.yaml"),
        "--state-dir", str(folder), "--socket", str(sock), "--gpu-backend", "sim",
        "--sim-topology", str(topology(folder, 1 + args.workers // 4)),
        "--docker-host", "unix:///nonexistent.sock", "--log-level", "WARNING",
    ]  # fmt: skip
    server = ChildProcess("allocator", argv, folder / "allocator.log").start()
    client = AllocatorClient(str(sock))
    try:
        server.wait_until(lambda: client.call("GET", "/healthz")[0] == 200, 30, "answering")
        client.allocate(user="warmup")
        grants, latencies = throughput(str(sock), args.seconds, args.workers)
        rate = grants / args.seconds
        p50, p99 = percentile(latencies, 0.5) * 1000, percentile(latencies, 0.99) * 1000
        handoffs = release_to_grant(client, args.rounds)
        r50, rmax = statistics.median(handoffs) * 1000, max(handoffs) * 1000
        r99 = percentile(handoffs, 0.99) * 1000
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)
    checks = [
        (f"grants/s with free capacity: {rate:.0f}", rate >= 300, ">= 300"),
        (f"grant latency p50 {p50:.1f} ms, p99 {p99:.1f} ms", p99 < 20, "p99 < 20 ms"),
        (
            f"release-to-grant p50 {r50:.1f} ms, p99 {r99:.1f} ms, max {rmax:.1f} ms",
            r99 < 100,
            "< 100 ms",
        ),
    ]
    print(f"allocator_load: {args.workers} workers, {args.seconds:g}s, {grants} grants")
    for text, ok, target in checks:
        print(f"  {'PASS' if ok else 'MISS'}  {text}  (target {target})")
    return 1 if args.strict and not all(ok for _, ok, _ in checks) else 0


if __name__ == "__main__":
    sys.exit(main())
