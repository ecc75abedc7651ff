"""Allocator load benchmark: grants/s and p99 as the history grows, against an empty app.

Runs a real allocator (`ds01 allocator`: waitress on a Unix socket, SQLite WAL, sim inventory)
as a child process and drives it through the same client the wrapper uses, one client process
per worker (allocate, then release, in a loop). It does so with 0, 10k and 200k released
allocations already in the store, and once against an empty Flask app served by the
allocator's own server (`AllocatorServer`, whose one-runner decision lane serves its routes
too) and called by the same client: the ceiling that waitress, Flask and the client set on
this machine. Goals (issue 16): grants/s with 200k
released rows within 1.2x of the empty store; >= 0.7x the empty app's throughput.

    .venv/bin/python bench/allocator_load.py [--seconds 12] [--rounds-load 8] [--workers 4]
        [--history 0,10000,200000]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml

from allocator.client import AllocatorClient
from allocator.lifecycle import released
from allocator.model import RESERVED, Allocation
from allocator.store_sqlite import SqliteAllocationStore
from bench.goals import Goal, percentile, report
from ds01.stack import ChildProcess

NAME = "allocator"


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


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def populate(db: Path, rows: int, devices: int = 8) -> float:
    """`rows` released allocations, an hour old (inside the history retention); seconds taken."""
    began = time.perf_counter()
    store = SqliteAllocationStore(db)
    now = time.time()
    with store.transaction() as tx:
        for n in range(rows):
            alloc = Allocation(
                f"hist{n:08d}", f"user{n % 300}", "admin", (f"MIG-hist-{n % devices}",),
                RESERVED, created_at=now - 7200 + n * 1e-3,
            )  # fmt: skip
            tx.insert(released(alloc, at=now - 3600, reason="released"))
    store.close()
    return time.perf_counter() - began


def _worker(sock: str, me: str, start_at: float, stop_at: float) -> list[float]:
    """One client process (as real users are): allocate, release, from `start_at` (once every
    client process is up) until `stop_at`."""
    client = AllocatorClient(sock)
    mine: list[float] = []
    time.sleep(max(0.0, start_at - time.time()))
    while time.time() < stop_at:
        began = time.perf_counter()
        alloc = client.allocate(user=me)
        mine.append(time.perf_counter() - began)
        client.call("DELETE", f"/v1/allocations/{alloc['id']}?user={me}")
    return mine


@dataclass(frozen=True)
class Load:
    grants: int
    rate: float
    p50_ms: float
    p99_ms: float
    latencies: tuple[float, ...] = ()

    def text(self) -> str:
        return f"{self.rate:.0f} grants/s, p50 {self.p50_ms:.1f} ms, p99 {self.p99_ms:.1f} ms"


def throughput(sock: str, seconds: float, workers: int) -> Load:
    start_at = time.time() + 0.5  # forking the client processes is not part of the figure
    stop_at = start_at + seconds
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        parts = pool.starmap(
            _worker, [(sock, f"bench{i}", start_at, stop_at) for i in range(workers)]
        )
    return _load([value for part in parts for value in part], seconds)


def _load(latencies: list[float], seconds: float) -> Load:
    return Load(
        len(latencies),
        len(latencies) / seconds,
        percentile(latencies, 0.5) * 1e3,
        percentile(latencies, 0.99) * 1e3,
        tuple(latencies),
    )


def merged(loads: list[Load], seconds: float) -> Load:
    """The rounds of one target as one figure over `seconds` in all."""
    return _load([value for load in loads for value in load.latencies], seconds)


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


def serve_empty(sock: str) -> None:
    """An empty Flask app on the allocator's own server: canned answers, no work."""
    from flask import Flask, jsonify

    from allocator.server import AllocatorServer

    app = Flask("empty")
    canned = {"id": "0" * 16, "user": "bench", "devices": ["MIG-x"], "state": "reserved"}

    @app.post("/v1/allocations")
    def grant():
        return jsonify({"allocation": canned}), 201

    @app.delete("/v1/allocations/<alloc_id>")
    def release(alloc_id: str):
        return jsonify({"allocation": {**canned, "id": alloc_id, "state": "released"}})

    @app.get("/healthz")
    def healthz():
        return jsonify({"status": "ok"})

    AllocatorServer(app, sock, threads=64).run()


def start_allocator(folder: Path, gpus: int) -> tuple[ChildProcess, AllocatorClient]:
    argv = [
        sys.executable, "-m", "ds01.cli", "allocator", "--policy", str(folder / "ds01.yaml"),
        "--state-dir", str(folder), "--socket", str(folder / "s.sock"), "--gpu-backend", "sim",
        "--sim-topology", str(topology(folder, gpus)),
        "--docker-host", "unix:///nonexistent.sock", "--log-level", "WARNING",
    ]  # fmt: skip
    return ChildProcess("allocator", argv, folder / "allocator.log").start(), AllocatorClient(
        str(folder / "s.sock")
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seconds", type=float, default=12.0, help="load per target, over all rounds (12)"
    )
    parser.add_argument(
        "--rounds-load", type=int, default=8, help="rounds the load is split into (8)"
    )
    parser.add_argument("--workers", type=int, default=4, help="concurrent client processes (4)")
    parser.add_argument("--rounds", type=int, default=20, help="release-to-grant rounds (20)")
    parser.add_argument(
        "--history", default="0,10000,200000", help="released rows per phase (0,10000,200000)"
    )
    parser.add_argument("--serve-empty", metavar="SOCKET", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_empty:
        serve_empty(args.serve_empty)
        return 0
    levels = [int(v) for v in args.history.split(",")]
    root = Path(tempfile.mkdtemp(prefix="ds01-allocbench-", dir="/tmp"))
    policy = {
        "gpu_wait": "30s",
        "default_group": "admin",
        "groups": {"admin": {"max_gpus": None, "allow_full_gpu": True}},
    }
    targets: dict[str, str] = {}  # name -> socket
    pids: dict[str, int] = {}
    started: list[ChildProcess] = []
    try:
        empty_sock = root / "empty.sock"
        empty = ChildProcess(
            "empty app", [sys.executable, __file__, "--serve-empty", str(empty_sock)],
            root / "empty.log",
        ).start()  # fmt: skip
        started.append(empty)
        client = AllocatorClient(str(empty_sock))
        empty.wait_until(lambda: client.call("GET", "/healthz")[0] == 200, 30, "answering")
        targets["empty"] = str(empty_sock)
        pids["empty"] = empty.pid
        for rows in levels:
            folder = root / f"h{rows}"
            folder.mkdir()
            (folder / "ds01.yaml").write_text(yaml.safe_dump(policy))
            took = populate(folder / "allocator.sqlite", rows)
            print(f"{rows:>7} released rows written in {took:.1f}s", flush=True)
            server, client = start_allocator(folder, 1 + args.workers // 4)
            started.append(server)
            server.wait_until(lambda c=client: c.call("GET", "/healthz")[0] == 200, 60, "up")
            targets[str(rows)] = str(folder / "s.sock")
            pids[str(rows)] = server.pid
        for sock in targets.values():
            throughput(sock, 0.5, args.workers)  # warm-up
        # Rounds, every target in turn: a neighbour's load moves all of them alike.
        parts: dict[str, list[Load]] = {name: [] for name in targets}
        cpu = dict.fromkeys(targets, 0.0)
        for _ in range(args.rounds_load):
            for name, sock in targets.items():
                before = cpu_seconds(pids[name])
                parts[name].append(throughput(sock, args.seconds / args.rounds_load, args.workers))
                cpu[name] += cpu_seconds(pids[name]) - before
        loads = {name: merged(found, args.seconds) for name, found in parts.items()}
        handoffs = release_to_grant(AllocatorClient(targets[str(levels[0])]), args.rounds)
    finally:
        for child in started:
            child.stop()
        shutil.rmtree(root, ignore_errors=True)
    per_pair = {name: cpu[name] / max(1, load.grants) * 1e3 for name, load in loads.items()}
    ceiling = loads.pop("empty")
    print(f"empty Flask app on AllocatorServer: {ceiling.text()}; server CPU "
          f"{per_pair['empty']:.2f} ms per request pair")  # fmt: skip
    for name, load in loads.items():
        print(f"{int(name):>7} released rows: {load.text()}; server CPU "
              f"{per_pair[name]:.2f} ms per grant + release")  # fmt: skip
    loads = {int(name): load for name, load in loads.items()}

    base, most = loads[levels[0]], loads[levels[-1]]
    r50, r99 = statistics.median(handoffs) * 1e3, percentile(handoffs, 0.99) * 1e3
    print(f"release-to-grant p50 {r50:.1f} ms, p99 {r99:.1f} ms (issue 6 target: p99 < 100 ms)")
    print(f"allocator_load: {args.workers} client processes, {args.seconds:g}s per target in "
          f"{args.rounds_load} rounds")  # fmt: skip
    slow = base.rate / most.rate
    report(
        Goal(
            NAME,
            f"grants/s at {levels[-1]:,} released rows vs {levels[0]:,}",
            f"{most.rate:.0f} vs {base.rate:.0f} grants/s ({slow:.2f}x the time per grant); "
            f"p99 {most.p99_ms:.1f} vs {base.p99_ms:.1f} ms",
            "within 1.2x",
            slow <= 1.2,
        )
    )
    share = base.rate / ceiling.rate
    # Each round measures the two back to back: their spread is this machine's noise.
    paired = sorted(
        mine.rate / empty.rate
        for mine, empty in zip(parts[str(levels[0])], parts["empty"], strict=True)
    )
    report(
        Goal(
            NAME,
            "grants/s vs an empty Flask app on the same server and client",
            f"{base.rate:.0f} vs {ceiling.rate:.0f} req pairs/s ({share:.2f}x; rounds "
            f"{', '.join(f'{r:.2f}x' for r in paired)})",
            ">= 0.7x",
            share >= 0.7,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
