"""`container history` / `container ls` source: GET /v1/history latency against audit logs of
growing size (the allocator reads at most the last 8 MiB of each file per request).

Runs a real allocator (waitress on a Unix socket, sim inventory) in this process; the audit
log is written by the enforcer's own AuditLog, 1 record in 20 for the asking user.

    .venv/bin/python bench/history_query.py [--sizes 1000,10000,100000] [--requests 50]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from allocator.client import AllocatorClient
from allocator.runtime import build_runtime, start_runtime
from bench.goals import Goal, report
from ds01.gpu.sim import SimBackend
from ds01.policy import parse_policy
from enforcer.audit import AuditLog

TARGET_MS = 250  # a command people type: answered well within a quarter second
DETAIL = "past its idle deadline by 3s; stop grace 60s; notice written; terminals: 1 of 1 written"
SUMMARY = "GPU container c of alice has an idle GPU and will be stopped at Mon 30 Nov 12:00 UTC"


def fill(path: Path, records: int) -> None:
    log = AuditLog(path)
    for n in range(records):
        user = "alice" if n % 20 == 0 else f"user{n % 50}"
        log.write(
            event="stop" if n % 2 else "notify", container_id=f"{n:064x}", container=f"c{n}",
            user=user, reason="idle", fingerprint=f"{n:x}",
            decision="stopped" if n % 2 else "notified",
            detail=DETAIL, summary=SUMMARY,
        )  # fmt: skip
    log.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--requests", type=int, default=50)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="ds01hist-"))
    try:
        for size in (int(s) for s in args.sizes.split(",")):
            audit = folder / f"audit-{size}.jsonl"
            fill(audit, size)
            runtime = start_runtime(
                build_runtime(
                    parse_policy({"users": {"root": "admin"}}),
                    db_path=folder / f"a-{size}.sqlite",
                    socket_path=folder / f"s-{size}.sock",
                    backend=SimBackend.from_files(None, folder / "sim.json"),
                    audit_log=audit,
                )
            )
            client = AllocatorClient(str(runtime.socket_path))
            times = []
            for _ in range(args.requests):
                start = time.perf_counter()
                items = client.history(user="alice", limit=100)
                times.append(time.perf_counter() - start)
            runtime.stop()
            p50, p99 = statistics.median(times), sorted(times)[int(0.99 * (len(times) - 1))]
            print(
                f"audit records={size:>7}  file={audit.stat().st_size / 2**20:6.1f} MiB  "
                f"returned={len(items):>3}  p50={p50 * 1000:7.1f} ms  p99={p99 * 1000:7.1f} ms"
            )
            worst = (size, p99)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    size, p99 = worst
    report(
        Goal(
            bench="history_query",
            goal=f"container history p99 with {size} audit records",
            figure=f"{p99 * 1000:.0f} ms",
            target=f"< {TARGET_MS} ms (interactive)",
            held=p99 * 1000 < TARGET_MS,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
