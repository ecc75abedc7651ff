"""`make bench`: run every benchmark, then print one table of the goals with held / not held.

Each benchmark runs as its own process (its output streams through as it comes) under a time
limit; the GOAL lines it prints (bench/goals.py) are gathered into the table. A benchmark that
fails or runs out of time shows as such in the table, never as a held goal.

    .venv/bin/python bench/summary.py [--only enforcer_burst,allocator_load] [--limit 240]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench.goals import Goal, verdict  # noqa: E402

BENCHMARKS = (
    "enforcer_burst",
    "allocator_load",
    "allocator_cluster",
    "exporter_scrape",
    "e2e_latency",
    "gateway_overhead",
    "history_query",
)


def run(name: str, limit: float) -> tuple[list[Goal], str]:
    """Run one benchmark; its goals and how it ended (ok, exit N, timed out)."""
    goals: list[Goal] = []
    began = time.monotonic()
    child = subprocess.Popen(
        [sys.executable, str(HERE / f"{name}.py")],
        cwd=HERE.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert child.stdout is not None
    try:
        for line in child.stdout:
            goal = Goal.parse(line)
            if goal is not None:
                goals.append(goal)
            else:
                print(f"  {line}", end="", flush=True)
            if time.monotonic() - began > limit:
                raise subprocess.TimeoutExpired(name, limit)
        code = child.wait(max(1.0, limit - (time.monotonic() - began)))
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
        return goals, f"timed out after {limit:.0f}s"
    took = time.monotonic() - began
    return goals, (f"ok in {took:.0f}s" if code == 0 else f"exit {code} after {took:.0f}s")


def table(rows: list[tuple[str, str, str, str, str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated benchmark names (default: all)")
    parser.add_argument("--limit", type=float, default=240.0, help="seconds per benchmark (240)")
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(BENCHMARKS)
    rows = [("bench", "goal", "figure", "target", "verdict")]
    failed = False
    for name in names:
        print(f"== bench/{name}.py", flush=True)
        goals, ended = run(name, args.limit)
        print(f"   ({ended})", flush=True)
        for g in goals:
            rows.append((g.bench, g.goal, g.figure, g.target, verdict(g)))
        if not ended.startswith("ok"):
            failed = True
            rows.append((name, "(benchmark)", ended, "runs to the end", "FAILED"))
    print("\nSummary (issue 16 goals; ratios are measured in the same run):")
    print(table(rows))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
