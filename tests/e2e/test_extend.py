"""`container extend` through the whole stack: the allocator records it, the exporter's
runtime deadline series moves, the runtime warning moves with it, and the enforcer stops the
container at the extended deadline, not the old one."""

from __future__ import annotations

import json
from datetime import datetime

import pytest
import requests

from allocator.client import AllocatorClient
from tests.e2e.test_lifecycle import deploy, stops

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

MAX_RUNTIME = 20.0
WARNING = 6.0
EACH = 10.0

POLICY = """
default_group: student
groups:
  student:
    max_gpus: 2
    max_runtime: 20s
    extensions: {max_per_container: 2, max_each: 10s, max_total: 20s}
  admin: {max_gpus: null, max_runtime: 72h, allow_full_gpu: true}
users: {root: student}
idle_timeout: 10m
idle_warning: 8s
runtime_warning: 6s
gpu_wait: 90s
gpu_hold_after_stop: 2s
container_hold_after_stop: 10m
reservation_ttl: 60s
stop_grace: 2s
unmanaged_gpu: {action: stop, grace: 6s}
gpu: {backend: sim, sim_topology: %s}
"""


@pytest.fixture
def stack_policy() -> str:
    return POLICY


def _query(prometheus: str, expr: str) -> float | None:
    answer = requests.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=5).json()
    result = answer["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def test_a_student_extends_twice_the_third_is_refused_and_the_stop_moves(
    stack, docker_client, eventually
):
    stack.cli(*deploy(stack, "e2e-long"))
    first = stack.cli("container", "extend", "e2e-long", "10s")
    assert "10s later" in first.stdout
    second = stack.cli("container", "extend", "e2e-long", "10s")
    assert "20s of runtime extensions in all" in second.stdout
    third = stack.cli("container", "extend", "e2e-long", "5s", check=False)
    assert third.returncode == 1
    assert "2 of 2 extensions" in third.stderr and "20s added" in third.stderr

    prometheus = stack.endpoints.prometheus
    selector = '{container="e2e-long"}'
    start = eventually(
        lambda: _query(prometheus, f"ds01_container_start_time_seconds{selector}"),
        30,
        "the start time of e2e-long in Prometheus",
    )
    extended = start + MAX_RUNTIME + 2 * EACH
    eventually(
        lambda: (
            _query(prometheus, f"ds01_container_runtime_deadline_timestamp_seconds{selector}")
            == extended
        ),
        30,
        "the runtime deadline series at start + max_runtime + both extensions",
    )

    container = docker_client.containers.get("e2e-long")

    def stopped() -> bool:
        container.reload()
        return container.status == "exited"

    eventually(stopped, 90, "e2e-long stopped at its extended runtime deadline")
    finished = datetime.fromisoformat(container.attrs["State"]["FinishedAt"][:26]).timestamp()
    assert finished >= extended, (finished, extended)  # not the old deadline start + 20s

    records = eventually(lambda: stops(stack.endpoints.audit_log), 20, "the stop in the audit")
    assert [(r["container"], r["reason"]) for r in records] == [("e2e-long", "max_runtime")]

    # The warning moved with the deadline: it became active only within runtime_warning of the
    # extended deadline, long after the old deadline (start + 20s) had passed.
    active = _first_warning(prometheus, start)
    assert active is not None and active >= extended - WARNING - 1.0, (active, extended)

    # The record is the allocator's: its owner sees both extensions listed.
    listed = AllocatorClient(stack.endpoints.allocator_socket).extensions()
    assert [(e["container_name"], e["seconds"]) for e in listed] == [("e2e-long", EACH)] * 2

    # `container usage` agrees with what Prometheus recorded over the run: 3/7 of a GPU (a
    # 3g.71gb slice of an H200) for as long as the container held it.
    report = json.loads(stack.cli("container", "usage", "--json").stdout)
    week = report["usage"][0]
    assert report["user"] == "root" and week["window"] == "7d"
    for kind in ("held", "busy", "idle"):
        recorded = _recorded_sum(prometheus, kind, "root", report["evaluated_at"])
        assert week[kind] == pytest.approx(recorded, rel=1e-9, abs=1e-12), kind
    assert week["held"] > 0
    assert week["held"] == pytest.approx(week["busy"] + week["idle"], rel=1e-9)
    held_seconds = finished - start  # an upper bound: samples stop when the container does
    assert week["held"] <= (held_seconds + 5) * 3 / 7 / 3600

    # `gpu-status --mine` shows the same GPU-hours (the same query; it may be evaluated a
    # moment later, so it is at least what was recorded then and no more than one more sample).
    status = json.loads(stack.cli("gpu-status", "--mine", "--json").stdout)
    [mine_week, mine_month] = status["usage"]
    assert (mine_week["window"], mine_month["window"]) == ("7d", "30d")
    assert mine_week["held"] >= week["held"] > 0
    assert mine_month["held"] >= mine_week["held"]


def _recorded_sum(prometheus: str, kind: str, user: str, at: float) -> float:
    """The raw samples of the recording rule over 7 days, summed here (not by PromQL)."""
    answer = requests.get(
        f"{prometheus}/api/v1/query",
        params={"query": f'ds01:user_gpu_{kind}:gpu_hours{{user="{user}"}}[7d]', "time": at},
        timeout=5,
    ).json()
    return sum(float(v) for series in answer["data"]["result"] for _, v in series["values"])


def _first_warning(prometheus: str, since: float) -> float | None:
    """The first sample of the warning's ALERTS series (pending or firing)."""
    answer = requests.get(
        f"{prometheus}/api/v1/query_range",
        params={
            "query": 'ALERTS{alertname="GPUContainerRuntimeWarning",container="e2e-long"}',
            "start": since,
            "end": datetime.now().timestamp(),
            "step": 1,
        },
        timeout=5,
    ).json()
    times = [float(t) for series in answer["data"]["result"] for t, _ in series["values"]]
    return min(times) if times else None
