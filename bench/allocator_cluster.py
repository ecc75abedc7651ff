"""Cluster store benchmark: grants/s and p99 of 3 allocators on one PostgreSQL, as a ratio to
one allocator on SQLite measured in the same run (issue 18 sets no number: a figure).

Every allocator is a real `ds01 allocator` process (sim devices of its own node); the same
number of client processes allocate and release in a loop, spread over the nodes for the
cluster. The two targets take turns in rounds, so the machine's other load moves both alike.
PostgreSQL runs with fsync off, as SQLite's WAL with synchronous=NORMAL does not sync a commit.

    .venv/bin/python bench/allocator_cluster.py [--seconds 6] [--workers 6] [--rounds 3]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from allocator.client import AllocatorClient, Refused
from bench.allocator_load import Load, _load, merged, topology
from bench.goals import Goal, report
from ds01.postgres_server import start_postgres
from tests.harness.allocators import start_allocator_node

NAME = "allocator_cluster"
NODES = ("node-a", "node-b", "node-c", "node-d", "node-e")
POLICY = {
    "gpu_wait": "30s",
    "default_group": "admin",
    "groups": {"admin": {"max_gpus": None, "allow_full_gpu": True}},
}


def _worker(sock: str, me: str, start_at: float, stop_at: float) -> tuple[list[float], list[str]]:
    """allocate + release in a loop; refusals are kept (by message), never hidden."""
    client = AllocatorClient(sock)
    mine: list[float] = []
    refused: list[str] = []
    time.sleep(max(0.0, start_at - time.time()))
    while time.time() < stop_at:
        began = time.perf_counter()
        try:
            alloc = client.allocate(user=me)
        except Refused as exc:
            refused.append(f"{exc.status} {exc.message.splitlines()[0]}")
            continue
        mine.append(time.perf_counter() - began)
        client.call("DELETE", f"/v1/allocations/{alloc['id']}?user={me}")
    return mine, refused


def throughput(socks: list[str], seconds: float, workers: int) -> tuple[Load, list[str]]:
    """`workers` client processes, worker i on socket i mod len(socks), for `seconds`."""
    start_at = time.time() + 0.5  # forking the client processes is not part of the figure
    stop_at = start_at + seconds
    plan = [(socks[i % len(socks)], f"bench{i}", start_at, stop_at) for i in range(workers)]
    # close + join, not the context manager's terminate(): terminating a pool whose workers
    # wait on its task queue can hang in join (seen here once in five runs).
    # The workers take SIGTERM's default back (main()'s handler is for the parent).
    pool = multiprocessing.get_context("fork").Pool(
        workers, initializer=signal.signal, initargs=(signal.SIGTERM, signal.SIG_DFL)
    )
    try:
        parts = pool.starmap(_worker, plan)
    finally:
        pool.close()
        pool.join()
    latencies = [value for part, _ in parts for value in part]
    return _load(latencies, seconds), [r for _, refused in parts for r in refused]


def replayed(client: AllocatorClient) -> int:
    """ds01_allocator_errors_total{source="store_race"} of one allocator, from its /metrics."""
    conn = client._connection()
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    for line in text.splitlines():
        if line.startswith('ds01_allocator_errors_total{source="store_race"}'):
            return int(float(line.split()[-1]))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="load per target (6)")
    parser.add_argument("--workers", type=int, default=6, help="client processes (6)")
    parser.add_argument("--rounds", type=int, default=3, help="turns per target (3)")
    parser.add_argument(
        "--nodes", type=int, default=3, choices=range(1, 6), help="allocators on PostgreSQL (3)"
    )
    args = parser.parse_args(argv)
    nodes = NODES[: args.nodes]
    # A time limit (summary.py, `timeout`) ends us with SIGTERM: still stop every child below.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(1))
    root = Path(tempfile.mkdtemp(prefix="ds01-clbench-", dir="/tmp"))
    os.chmod(root, 0o755)  # the postgres account reaches its data folder
    started = []
    postgres = None
    try:
        postgres = start_postgres(root / "pg", fsync=False)
        dsn = postgres.create_database("bench")
        layout = topology(root, 2)
        single = start_allocator_node(
            root / "sqlite", "node-s", topology=layout, policy=POLICY, dsn=None
        )
        started.append(single)
        for node in nodes:
            started.append(
                start_allocator_node(root / node, node, topology=layout, policy=POLICY, dsn=dsn)
            )
        targets = {
            "sqlite": [single.client.socket_path],
            "postgres": [n.client.socket_path for n in started[1:]],
        }
        for socks in targets.values():
            throughput(socks, 0.5, args.workers)  # warm-up (and the migrations)
        parts: dict[str, list[Load]] = {name: [] for name in targets}
        refusals: dict[str, list[str]] = {name: [] for name in targets}
        for _ in range(args.rounds):
            for name, socks in targets.items():
                load, refused = throughput(socks, args.seconds / args.rounds, args.workers)
                parts[name].append(load)
                refusals[name] += refused
        loads = {name: merged(found, args.seconds) for name, found in parts.items()}
        races = sum(replayed(n.client) for n in started[1:])
    finally:
        for node in started:
            node.stop()
        if postgres is not None:
            postgres.close()
        shutil.rmtree(root, ignore_errors=True)
    lite, pg = loads["sqlite"], loads["postgres"]
    print(f"SQLite, 1 allocator:          {lite.text()}")
    print(f"PostgreSQL, {len(nodes)} allocators:     {pg.text()}")
    grants = sum(p.grants for p in parts["postgres"])
    print(f"PostgreSQL: {races} transactions replayed after a lost serialization race "
          f"(over {grants} grants + releases, warm-up included)")  # fmt: skip
    for name, found in refusals.items():
        if found:
            print(f"{name}: {len(found)} requests refused, e.g. {sorted(set(found))[:3]}")
    print(f"{NAME}: {args.workers} client processes, {args.seconds:g}s per target in "
          f"{args.rounds} rounds")  # fmt: skip
    report(
        Goal(
            NAME,
            f"grants/s, PostgreSQL across {len(nodes)} allocators vs SQLite on one node",
            f"{pg.rate:.0f} vs {lite.rate:.0f} grants/s ({pg.rate / lite.rate:.2f}x)",
            "figure (issue 18 sets no number)",
            None,
        )
    )
    report(
        Goal(
            NAME,
            f"p99 grant latency, PostgreSQL across {len(nodes)} allocators vs SQLite",
            f"{pg.p99_ms:.1f} vs {lite.p99_ms:.1f} ms ({pg.p99_ms / lite.p99_ms:.2f}x)",
            "figure (issue 18 sets no number)",
            None,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
