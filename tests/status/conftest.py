"""Fixtures for the gpu-status and dashboard tests: a fixed Prometheus answer on a real socket."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from ds01.gpu_status.query import LAST_COLLECT_QUERY, SERIES_QUERY
from ds01.stack import free_port
from tests.harness.containers import remove_container
from tests.harness.waiting import eventually
from tests.status.servers import FixedPrometheus, serve

HERE = Path(__file__).parent
REPO = HERE.parents[1]
GOLDEN = HERE / "golden"


@pytest.fixture
def answer() -> dict[str, Any]:
    """A recorded-style Prometheus answer for the default sim host (see fixtures/README.md)."""
    return json.loads((HERE / "fixtures" / "prometheus-answer.json").read_text())


@pytest.fixture
def fixed_prometheus() -> Iterator[Callable[..., str]]:
    """Factory: serve an answer (series + last collection) on a real HTTP server; returns URL."""
    stack: list[Any] = []

    def start(answer: dict[str, Any]) -> str:
        handler = FixedPrometheus(
            {SERIES_QUERY: answer["series"], LAST_COLLECT_QUERY: answer["last_collect"]}
        )
        context = serve(handler)
        url = context.__enter__()
        stack.append(context)
        return url

    yield start
    for context in reversed(stack):
        context.__exit__(None, None, None)


def check_golden(name: str, text: str, update: bool) -> None:
    """Compare with golden/<name>; DS01_UPDATE_GOLDEN=1 rewrites it instead."""
    path = GOLDEN / name
    if update or not path.exists():
        path.write_text(text)
        if not update:
            pytest.fail(f"golden file {path} was missing and has been written; check it in")
    assert text == path.read_text(), f"output differs from {path}"


# --- the live stack (integration tests) ---------------------------------------------------------

LIVE_POLICY = """
idle_timeout: 30m
default_group: student
users: {{bob: researcher, {me}: student}}
groups:
  student: {{max_gpus: 2, max_runtime: 24h, idle_timeout: 2s}}
  researcher: {{max_gpus: 4, max_runtime: 48h}}
"""


@dataclass
class LiveStack:
    prometheus_url: str
    exporter_url: str
    fleet: Any
    exporter: Any


def compressed_rules(path: Path) -> str:
    """The repository's rule file with every group evaluated each second: the GPU-hours group
    runs once a minute, longer than the tests wait for its first sample on a busy machine."""
    doc = yaml.safe_load(path.read_text())
    for group in doc.get("groups", []):
        if "interval" in group:
            group["interval"] = "1s"
    return yaml.safe_dump(doc, sort_keys=False)


@pytest.fixture(scope="module")
def live(tmp_path_factory, dockerd, docker_client, busybox_image) -> Iterator[LiveStack]:
    """Containers on two MIG instances (bob busy, the caller idle) and one without a GPU, the
    exporter (sim backend), stand-ins for allocator and enforcer, and Prometheus with the
    repository's rules, scraping every second; ready once gpu-status has something to show."""
    from docker.types import DeviceRequest

    from ds01.gpu.sim import SimStateFile, load_topology
    from ds01.gpu_status.cli import current_user
    from ds01.stack import StackError, start_prometheus
    from tests.harness.components import missing, require_binary
    from tests.status import live as lv

    require_binary("prometheus")
    if not (REPO / "exporter" / "cli.py").exists():
        missing("exporter/cli.py is not there yet")
    rule_files = sorted(lv.RULES.glob("*.yml"))
    if not (lv.RULES / "ds01-recording.yml").exists():
        missing("prometheus/rules/ds01-recording.yml is not there yet")
    from ds01.promconfig import PrometheusSettings, render_prometheus_config

    workdir = tmp_path_factory.mktemp("status-live")
    me = current_user()
    policy = workdir / "ds01.yaml"
    policy.write_text(LIVE_POLICY.format(me=me))
    devices = {d.index: d.device_uuid for d in load_topology(None)}
    made = []

    def run(name: str, user: str, gpus: list[str] | None) -> Any:
        extra = {}
        if gpus:
            extra["device_requests"] = [DeviceRequest(device_ids=gpus, capabilities=[["gpu"]])]
        container = docker_client.containers.run(
            busybox_image,
            ["sleep", "3600"],
            name=f"{name}-{uuid.uuid4().hex[:6]}",
            labels={"ds01.user": user},
            network_mode="none",
            detach=True,
            **extra,
        )
        made.append(container)
        container.reload()
        return container

    servers: list[Any] = []
    children: list[Any] = []
    try:
        busy = run("gs-busy", "bob", [devices["0:0"]])
        idle = run("gs-idle", me, [devices["0:1"]])
        run("gs-cpu", me, None)
        fleet = lv.Fleet(me, busy.id, idle.id, devices)
        sim_state = SimStateFile(workdir / "sim-gpu-state.json")
        sim_state.set_device("0:0", activity=0.9, pids=[busy.attrs["State"]["Pid"]])
        sim_state.set_device("0:1", activity=0.0, pids=[idle.attrs["State"]["Pid"]])
        exporter, exporter_url = lv.start_exporter(
            workdir, policy=policy, docker_host=dockerd.url, sim_state=sim_state.path
        )
        children.append(exporter)
        targets = []
        for fake in (lv.FakeAllocator(fleet), lv.FakeEnforcer()):
            context = serve(lv.DynamicMetrics(fake.text))
            targets.append(context.__enter__().removeprefix("http://"))
            servers.append(context)
        settings = PrometheusSettings(
            exporter_targets=(exporter_url.removeprefix("http://"),),
            allocator_targets=(targets[0],),
            enforcer_targets=(targets[1],),
            alertmanager_targets=(f"127.0.0.1:{free_port()}",),  # nobody: alerts only recorded
            scrape_interval=1.0,
            evaluation_interval=1.0,
            rule_files=tuple(f"rules/{p.name}" for p in rule_files),
            node="gpu-a",  # as `ds01 up` renders it: every series carries its node
        )
        try:
            prometheus = start_prometheus(
                workdir / "prometheus",
                render_prometheus_config(settings),
                extra_files={f"rules/{p.name}": compressed_rules(p) for p in rule_files},
            )
        except StackError as exc:
            pytest.fail(str(exc), pytrace=False)
        children.append(prometheus)
        stack = LiveStack(prometheus.url, exporter_url, fleet, exporter)
        settled = (  # the rules have been evaluated on complete data, the busy one is busy
            "count(ds01_container_gpu_device) == 2 and on() sum(ds01:devices_free:count) == 2"
            f' and on() ds01_container_busy{{container_id="{busy.id}"}} == 1'
        )
        eventually(
            lambda: lv.instant(prometheus.url, settled),
            60,
            "Prometheus to see both GPU containers, the allocations and the recording rules",
            interval=0.5,
        )
        yield stack
    finally:
        for child in reversed(children):
            child.stop()
        for context in servers:
            context.__exit__(None, None, None)
        for container in made:
            remove_container(container)
