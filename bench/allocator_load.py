"""Allocator load benchmark: grants/s and p99 latency with free capacity, release-to-grant.

Runs a real allocator (waitress on a Unix socket, SQLite WAL, sim inventory) in-process and
drives it through the same client the wrapper uses. Targets (issue 6): >= 300 grants/s,
p99 grant latency < 20 ms, release-to-grant < 100 ms.

    .venv/bin/python bench/allocator_load.py [--seconds 5] [--workers 8] [--strict]
"""

from __future__ import annotations

import argparse
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
from allocator.runtime import build_runtime, start_runtime
from allocator.service import Settings
from ds01.gpu.sim import SimBackend
from ds01.policy import parse_policy


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


def throughput(client: AllocatorClient, seconds: float, workers: int) -> tuple[int, list[float]]:
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def work(index: int) -> None:
        me = f"bench{index}"
        mine: list[float] = []
        while time.monotonic() < stop:
            began = time.perf_counter()
            alloc = client.allocate(user=me)
            mine.append(time.perf_counter() - began)
            client.call("DELETE", f"/v1/allocations/{alloc['id']}?user={me}")
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return len(latencies), latencies


def release_to_grant(client: AllocatorClient, rounds: int) -> list[float]:
    """A waiter queued for the only free-able 3g.71gb; time from release to its grant."""
    results = []
    holder = client.allocate(user="holder", profile="3g.71gb")
    for _ in range(rounds):
        granted: dict = {}
        done = threading.Event()

        def wait(granted: dict = granted, done: threading.Event = done) -> None:
            granted["alloc"] = client.allocate(user="waiter", profile="3g.71gb", poll=5.0)
            granted["at"] = time.perf_counter()
            done.set()

        thread = threading.Thread(target=wait)
        thread.start()
        while not client.call("GET", "/healthz")[1].get("queue_length"):
            time.sleep(0.005)
        time.sleep(0.05)  # the waiter is inside its long poll
        released_at = time.perf_counter()
        client.call("DELETE", f"/v1/allocations/{holder['id']}?user=holder")
        done.wait(10)
        thread.join()
        results.append(granted["at"] - released_at)
        holder = granted["alloc"]
        holder["user"] = "waiter"
        client.call("DELETE", f"/v1/allocations/{holder['id']}?user=waiter")
        holder = client.allocate(user="holder", profile="3g.71gb")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="throughput phase (5)")
    parser.add_argument("--workers", type=int, default=8, help="concurrent clients (8)")
    parser.add_argument("--rounds", type=int, default=20, help="release-to-grant rounds (20)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="ds01b-", dir="/tmp"))
    try:
        policy = parse_policy(
            {"gpu_wait": "30s", "groups": {"admin": {"max_gpus": None, "allow_full_gpu": True}},
             "default_group": "admin"}
        )  # fmt: skip
        runtime = build_runtime(
            policy,
            db_path=folder / "allocator.sqlite",
            socket_path=folder / "s.sock",
            backend=SimBackend.from_files(topology(folder, 1 + args.workers // 4), None),
            settings=Settings(inventory_refresh=1.0),
        )
        start_runtime(runtime)
        client = AllocatorClient(str(runtime.socket_path))
        client.allocate(user="warmup")
        grants, latencies = throughput(client, args.seconds, args.workers)
        rate = grants / args.seconds
        p50, p99 = percentile(latencies, 0.5) * 1000, percentile(latencies, 0.99) * 1000
        handoffs = release_to_grant(client, args.rounds)
        r50, rmax = statistics.median(handoffs) * 1000, max(handoffs) * 1000
        r99 = percentile(handoffs, 0.99) * 1000
        runtime.stop()
    finally:
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
