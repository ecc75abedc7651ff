"""The live stack for the gpu-status and dashboard integration tests.

Real everything: the private dockerd with GPU containers (real DeviceRequests), `python -m
exporter` with the sim backend, and Prometheus scraping it with the repository's rule files
from `prometheus/rules/`. The allocator and the enforcer are not part of these tests: two tiny
HTTP servers stand in for them and serve realistic series of DESIGN.md's contract (an
allocation bound to the busy container, a reservation, a queue, counters that grow on every
scrape as a working service's do), so every dashboard panel has something to show.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from ds01.stack import ChildProcess, free_port

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "prometheus" / "rules"


@dataclass(frozen=True)
class Fleet:
    """What the test put on the host: who holds which device."""

    me: str
    busy_id: str
    idle_id: str
    devices: dict[str, str]  # index ("0:0") -> device UUID


def start_exporter(
    workdir: Path, *, policy: Path, docker_host: str, sim_state: Path
) -> tuple[ChildProcess, str]:
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "exporter",
        "--policy",
        str(policy),
        "--state-dir",
        str(workdir / "exporter-state"),
        "--listen",
        f"127.0.0.1:{port}",
        "--docker-host",
        docker_host,
        "--gpu-backend",
        "sim",
        "--sim-state",
        str(sim_state),
        "--collect-interval",
        "500ms",
    ]
    child = ChildProcess("exporter", argv, workdir / "exporter.log", cwd=REPO).start()
    url = f"http://127.0.0.1:{port}"
    child.wait_until(
        lambda: requests.get(f"{url}/healthz", timeout=1).status_code == 200, 60, "healthy"
    )
    return child, url


@dataclass
class FakeAllocator:
    """Allocator series (contract names): grows one grant and one wait per scrape."""

    fleet: Fleet
    scrapes: int = 0

    def text(self) -> str:
        self.scrapes += 1
        n = self.scrapes
        busy_dev, reserved_dev = self.fleet.devices["0:0"], self.fleet.devices["0:3"]
        waits = {"0.1": n, "1": 2 * n, "10": 3 * n, "60": 3 * n, "180": 3 * n, "+Inf": 3 * n}
        lines = [
            "# HELP ds01_allocation_device 1 per device of each live allocation.",
            "# TYPE ds01_allocation_device gauge",
            f'ds01_allocation_device{{allocation="a-0001",user="bob",group="researcher",'
            f'container_id="{self.fleet.busy_id}",device_uuid="{busy_dev}",state="bound"}} 1',
            f'ds01_allocation_device{{allocation="a-0002",user="carol",group="student",'
            f'container_id="",device_uuid="{reserved_dev}",state="reserved"}} 1',
            "# HELP ds01_allocator_queue_length Requests waiting in the allocator queue.",
            "# TYPE ds01_allocator_queue_length gauge",
            "ds01_allocator_queue_length 1",
            "# HELP ds01_allocator_queue_wait_seconds Seconds a request waited.",
            "# TYPE ds01_allocator_queue_wait_seconds histogram",
            *(
                f'ds01_allocator_queue_wait_seconds_bucket{{le="{le}"}} {c}'
                for le, c in waits.items()
            ),
            f"ds01_allocator_queue_wait_seconds_sum {8.5 * n}",
            f"ds01_allocator_queue_wait_seconds_count {3 * n}",
            "# HELP ds01_allocator_grants_total Allocations granted.",
            "# TYPE ds01_allocator_grants_total counter",
            f"ds01_allocator_grants_total {3 * n}",
            "# HELP ds01_allocator_denials_total Allocation requests refused, by reason.",
            "# TYPE ds01_allocator_denials_total counter",
            f'ds01_allocator_denials_total{{reason="quota"}} {n}',
            'ds01_allocator_denials_total{reason="timeout"} 0',
        ]
        return "\n".join(lines) + "\n"


@dataclass
class FakeEnforcer:
    """Enforcer series (contract names): one stop and one notice per scrape."""

    scrapes: int = 0

    def text(self) -> str:
        self.scrapes += 1
        n = self.scrapes
        lines = [
            "# HELP ds01_enforcer_alerts_total Alerts received by endpoint and status.",
            "# TYPE ds01_enforcer_alerts_total counter",
            f'ds01_enforcer_alerts_total{{endpoint="alerts",status="accepted"}} {n}',
            f'ds01_enforcer_alerts_total{{endpoint="notify",status="accepted"}} {n}',
            "# HELP ds01_enforcer_actions_total Decisions taken by action and result.",
            "# TYPE ds01_enforcer_actions_total counter",
            f'ds01_enforcer_actions_total{{action="stop",result="stopped"}} {n}',
            'ds01_enforcer_actions_total{action="stop",result="skipped"} 0',
            'ds01_enforcer_actions_total{action="stop",result="failed"} 0',
            f'ds01_enforcer_actions_total{{action="notify",result="notified"}} {n}',
            "# HELP ds01_enforcer_queue_depth Journaled actions not yet done.",
            "# TYPE ds01_enforcer_queue_depth gauge",
            "ds01_enforcer_queue_depth 0",
            "# HELP ds01_enforcer_action_latency_seconds Alert to decision, in seconds.",
            "# TYPE ds01_enforcer_action_latency_seconds histogram",
            f'ds01_enforcer_action_latency_seconds_bucket{{le="0.5"}} {n}',
            f'ds01_enforcer_action_latency_seconds_bucket{{le="+Inf"}} {2 * n}',
            f"ds01_enforcer_action_latency_seconds_sum {1.2 * n}",
            f"ds01_enforcer_action_latency_seconds_count {2 * n}",
        ]
        return "\n".join(lines) + "\n"


class DynamicMetrics:
    """A /metrics handler whose text is made fresh for each scrape."""

    def __init__(self, make: Callable[[], str]) -> None:
        self.make = make

    def __call__(self, path: str, params: Any) -> tuple[int, str, bytes]:
        if path != "/metrics":
            return 404, "text/plain", b"not found\n"
        return 200, "text/plain; version=0.0.4", self.make().encode()


def instant(url: str, expr: str) -> list[dict[str, Any]]:
    answer = requests.get(f"{url}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert answer["status"] == "success", (expr, answer)
    return answer["data"]["result"]
