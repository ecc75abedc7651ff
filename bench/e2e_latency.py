"""Time from a container's idle deadline to its stop, over N containers, on the whole stack.

Production intervals scaled down (collect 0.5 s, scrape 1 s, evaluation 1 s, group_wait 0,
stop grace 1 s). Prints p50/p99 of (Docker's FinishedAt - idle deadline) and the theoretical
floor (collect + scrape + evaluation + group_wait + stop grace), so the ratio is visible.

    .venv/bin/python bench/e2e_latency.py [--containers 20]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import docker
import requests

from ds01.containers import parse_docker_time
from ds01.stack import ensure_busybox_image, start_dockerd
from ds01.supervisor import StackOptions, StackSupervisor, Timings

TIMINGS = Timings(
    collect_interval=0.5,
    scrape_interval=1.0,
    evaluation_interval=1.0,
    group_wait=0.0,
    group_interval=1.0,
    repeat_interval=10.0,
    exporter_stale_after=15.0,
)
STOP_GRACE = 1.0
IDLE_TIMEOUT = 20.0


def topology(devices: int) -> str:
    gpus = []
    per_gpu = 7
    for _gpu in range((devices + per_gpu - 1) // per_gpu):
        mig = ", ".join(
            f"{{profile: 1g.18gb, gi_id: {9 + i}, mig_index: {i}}}" for i in range(per_gpu)
        )
        gpus.append(f"  - {{model: NVIDIA H200, memory: 141gb, gpm: true, mig: [{mig}]}}")
    return "seed: bench\ngpus:\n" + "\n".join(gpus) + "\n"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--containers", type=int, default=20)
    args = parser.parse_args()
    # SIGTERM (e.g. from `timeout`) must still run the cleanup below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = Path(tempfile.mkdtemp(prefix="ds01b-", dir="/tmp"))
    engine = start_dockerd(work / "d")
    client = docker.DockerClient(base_url=engine.url)
    supervisor = None
    try:
        image = ensure_busybox_image(client)
        (work / "topology.yaml").write_text(topology(args.containers))
        policy = work / "ds01.yaml"
        policy.write_text(
            f"users: {{root: admin}}\nidle_timeout: {IDLE_TIMEOUT}s\nidle_warning: 5s\n"
            f"stop_grace: {STOP_GRACE}s\ngpu_hold_after_stop: 1m\n"
            f"gpu: {{backend: sim, sim_topology: {work / 'topology.yaml'}}}\n"
        )
        supervisor = StackSupervisor(
            StackOptions(policy, work / "state", TIMINGS, docker_host=engine.url)
        )
        ep = supervisor.start()
        env = dict(os.environ, DOCKER_HOST=engine.url, DS01_ALLOCATOR_SOCKET=ep.allocator_socket)
        names = [f"bench-{i:02d}" for i in range(args.containers)]
        for name in names:  # deployed one after another: deadlines spread over a few seconds
            subprocess.run(
                [
                    sys.executable,
                    "-c",
                    "import sys; from ds01.cli import container_main as m; sys.exit(m())",
                    "deploy",
                    name,
                    "--image",
                    image,
                    "--network",
                    "none",
                    "--home",
                    str(work / "home"),
                    "--command",
                    "sleep 3600",
                ],
                env=env,
                check=True,
                capture_output=True,
            )
        deadlines: dict[str, float] = {}
        give_up = time.time() + 60
        while len(deadlines) < len(names):
            if time.time() > give_up:
                print(
                    f"the exporter never showed deadlines for {sorted(set(names) - set(deadlines))}"
                )
                return 1
            state = requests.get(f"{ep.exporter}/api/state", timeout=5).json()
            for c in state.get("containers", []):
                if c.get("container") in names and c.get("idle_deadline") is not None:
                    deadlines[c["container"]] = float(c["idle_deadline"])
            time.sleep(0.5)
        wait_until = max(deadlines.values()) + 60
        latencies: dict[str, float] = {}
        while len(latencies) < len(names) and time.time() < wait_until:
            for name in names:
                if name in latencies:
                    continue
                attrs = client.api.inspect_container(name)
                if not attrs["State"]["Running"]:
                    finished = parse_docker_time(attrs["State"]["FinishedAt"]) or time.time()
                    latencies[name] = finished - deadlines[name]
            time.sleep(0.2)
        floor = (
            TIMINGS.collect_interval
            + TIMINGS.scrape_interval
            + TIMINGS.evaluation_interval
            + TIMINGS.group_wait
            + STOP_GRACE
        )
        values = list(latencies.values())
        stopped = len(values)
        print(json.dumps({"containers": len(names), "stopped": stopped}))
        if not values:
            print("no container was stopped")
            return 1
        p50, p99 = statistics.median(values), percentile(values, 0.99)
        print(
            f"deadline -> stop latency over {stopped} containers: "
            f"p50 {p50:.2f}s  p99 {p99:.2f}s  max {max(values):.2f}s"
        )
        print(
            f"theoretical floor (collect {TIMINGS.collect_interval}s + scrape "
            f"{TIMINGS.scrape_interval}s + evaluation {TIMINGS.evaluation_interval}s + "
            f"group_wait {TIMINGS.group_wait}s + stop grace {STOP_GRACE}s): {floor:.2f}s"
        )
        print(
            f"p99 - floor: {p99 - floor:+.2f}s (target: within 2 s);  p99/floor: {p99 / floor:.2f}"
        )
        return 0 if stopped == len(names) else 1
    finally:
        if supervisor is not None:
            supervisor.stop()
        client.close()
        engine.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
