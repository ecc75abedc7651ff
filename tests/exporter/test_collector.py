"""One collection cycle at a time: sim GPU backend, recorded containers, a frozen clock."""

from __future__ import annotations

import copy
import functools
import math
import time

import pytest
from prometheus_client import CollectorRegistry

from ds01.cgroups import container_id_of_pid
from ds01.clock import FrozenClock
from ds01.containers import parse_docker_time
from ds01.policy import parse_policy
from exporter.clocks import ClockStore
from exporter.collector import SAVE_EVERY, Collector
from exporter.health import ErrorCounters
from exporter.inventory import Inventory
from exporter.keepalive import KeepAliveChecker
from exporter.metrics import SnapshotCollector
from exporter.service import load_clocks

POLICY = {
    "idle_timeout": "10m",
    "users": {"alice": "researcher", "carol": "researcher"},
    "exemptions": [{"user": "carol", "from": ["idle", "max_runtime"], "reason": "thesis"}],
}


class BrokenBackend:
    """A GPU backend whose every read fails, as NVML does when the driver goes away."""

    name = "broken"

    def __init__(self, devices):
        self._devices = devices

    def devices(self):
        return self._devices

    def read(self):
        raise RuntimeError("NVML_ERROR_GPU_IS_LOST")

    def close(self):
        return None


@pytest.fixture
def docker_state(inspects):
    return {data["Id"]: copy.deepcopy(data) for data in inspects.values()}


@pytest.fixture
def managed(inspects):
    return inspects["gpu-managed"]


@pytest.fixture
def start(managed) -> float:
    return parse_docker_time(managed["State"]["StartedAt"])


@pytest.fixture
def clock(start) -> FrozenClock:
    return FrozenClock(start - 5.0)  # measuring began just before the containers started


@pytest.fixture
def fake_proc(tmp_path):
    """A checked-in-style /proc: PID -> cgroup file naming a container."""
    root = tmp_path / "proc"

    def put(pid: int, container_id: str) -> None:
        (root / str(pid)).mkdir(parents=True)
        (root / str(pid) / "cgroup").write_text(f"0::/system.slice/docker-{container_id}.scope\n")

    put.root = root
    return put


@pytest.fixture
def inventory(docker_state, sim_inventory) -> Inventory:
    inventory = Inventory(docker_state.get, sim_inventory)
    inventory.replace_all(docker_state.values())
    return inventory


@pytest.fixture
def make_collector(inventory, sim_backend, clock, tmp_path, fake_proc):
    def make(
        *,
        backend=None,
        docker_ok=lambda: True,
        policy=POLICY,
        store=True,
        errors=None,
        on_publish=None,
        **kw,
    ):
        errors = errors or ErrorCounters()
        clock_store = ClockStore(tmp_path / "state") if store else None
        return Collector(
            backend=backend or sim_backend,
            inventory=kw.get("inventory", inventory),
            policy=parse_policy(policy),
            keepalive=KeepAliveChecker(
                path="/workspace/.keep-alive", archive_stat=None, interval=60, errors=errors
            ),
            errors=errors,
            book=load_clocks(clock_store, errors) if clock_store else None,
            store=clock_store,
            docker_ok=docker_ok,
            clock=clock,
            interval=1.0,
            pid_owner=functools.partial(container_id_of_pid, proc_root=fake_proc.root),
            on_publish=on_publish,
        )

    return make


def by_name(snapshot):
    return {c.facts.name: c for c in snapshot.containers}


def test_only_running_gpu_containers_appear(make_collector, clock, start):
    clock.current = start + 10
    collector = make_collector()
    assert collector.snapshot is None
    assert collector.collect_once()
    assert set(by_name(collector.snapshot)) == {"alice-train", "bob-dev"}
    assert len(collector.snapshot.devices) == 5


def test_busy_container_advances_and_idle_deadline_stays(
    make_collector, sim_state, sim_inventory, clock, start
):
    sim_state.set_device(sim_inventory[0].index, busy=True)
    collector = make_collector()
    clock.current = start + 10
    collector.collect_once()
    first = by_name(collector.snapshot)
    clock.advance(60)
    collector.collect_once()
    later = by_name(collector.snapshot)

    alice, bob = later["alice-train"], later["bob-dev"]
    assert alice.busy and alice.last_busy == start + 70
    assert not bob.busy
    assert bob.idle_deadline == first["bob-dev"].idle_deadline == bob.last_busy + 600
    assert alice.idle_deadline == start + 70 + 600
    assert alice.runtime_deadline == pytest.approx(start + 48 * 3600)
    assert (alice.group, bob.group) == ("researcher", "student")
    devices = {d.device.device_uuid: d for d in collector.snapshot.devices}
    assert devices[sim_inventory[0].device_uuid].busy
    assert devices[sim_inventory[0].device_uuid].last_busy == start + 70
    assert not devices[sim_inventory[1].device_uuid].busy


def test_exemptions_from_the_policy_make_deadlines_infinite(
    make_collector, inventory, docker_state, managed, clock, start
):
    docker_state[managed["Id"]]["Config"]["Labels"]["ds01.user"] = "carol"
    inventory.replace_all(docker_state.values())
    clock.current = start + 10
    collector = make_collector()
    collector.collect_once()
    carol = by_name(collector.snapshot)["alice-train"]
    assert math.isinf(carol.idle_deadline) and carol.idle_deadline_reason == "exempt"
    assert math.isinf(carol.runtime_deadline) and carol.runtime_deadline_reason == "exempt"


@pytest.mark.parametrize(
    ("labels", "ctype", "days"),
    [
        (
            {"devcontainer.local_folder": "/home/alice/x", "ds01.type": "devcontainer"},
            "devcontainer",
            7,
        ),
        ({"com.docker.compose.project": "exp", "ds01.type": "compose"}, "compose", 3),
        ({"ds01.type": "docker"}, "docker", 2),
    ],
)
def test_a_container_allocated_through_our_tools_keeps_its_clients_runtime_limit(
    make_collector, inventory, docker_state, managed, clock, start, labels, ctype, days
):
    docker_state[managed["Id"]]["Config"]["Labels"].pop("ds01.type", None)
    docker_state[managed["Id"]]["Config"]["Labels"].update(labels)  # still ds01.managed=true
    inventory.replace_all(docker_state.values())
    clock.current = start + 10
    collector = make_collector()
    collector.collect_once()
    state = by_name(collector.snapshot)["alice-train"]
    assert state.facts.managed and state.facts.type == ctype
    assert state.runtime_deadline == pytest.approx(start + days * 86400)


def test_on_a_shared_device_the_process_owner_is_busy_and_the_other_is_not(
    make_collector, inventory, managed, sim_state, sim_inventory, fake_proc, clock, start
):
    twin = copy.deepcopy(managed)
    twin["Id"], twin["Name"] = "f" * 64, "/alice-twin"
    inventory.put(twin)
    fake_proc(4242, managed["Id"])
    sim_state.set_device(sim_inventory[0].index, busy=True, pids=[4242])
    clock.current = start + 10
    collector = make_collector()
    collector.collect_once()
    states = by_name(collector.snapshot)
    assert states["alice-train"].busy
    assert not states["alice-twin"].busy


def test_a_failing_gpu_backend_publishes_nothing_and_counts_unmeasured_time_as_busy(
    make_collector, sim_inventory, managed, clock, start, tmp_path
):
    errors = ErrorCounters()
    broken = make_collector(backend=BrokenBackend(sim_inventory), errors=errors)
    clock.current = start + 300
    assert broken.collect_once() is False
    assert broken.snapshot is None
    assert errors.values()["gpu"] == 1
    saved = ClockStore(tmp_path / "state").load()
    assert saved.containers[managed["Id"]].last_busy == start + 300


def test_an_unmeasurable_device_counts_busy_and_is_counted(
    make_collector, sim_state, sim_inventory, clock, start
):
    errors = ErrorCounters()
    sim_state.set_device(sim_inventory[1].index, fail=True)
    collector = make_collector(errors=errors)
    clock.current = start + 100
    assert collector.collect_once()
    assert by_name(collector.snapshot)["bob-dev"].busy
    assert errors.values()["gpu"] == 1


def test_without_docker_devices_stay_fresh_and_containers_keep_their_last_picture(
    make_collector, sim_state, sim_inventory, clock, start
):
    healthy = {"ok": True}
    collector = make_collector(docker_ok=lambda: healthy["ok"])
    clock.current = start + 10
    collector.collect_once()
    published = collector.snapshot
    healthy["ok"] = False
    sim_state.set_device(sim_inventory[1].index, busy=True)
    clock.advance(30)
    assert collector.collect_once() is True
    latest = collector.snapshot
    assert latest.timestamp == published.timestamp  # the container picture is stale: rules see it
    assert latest.containers == published.containers
    devices = {d.device.device_uuid: d for d in latest.devices}
    assert devices[sim_inventory[1].device_uuid].busy
    assert devices[sim_inventory[1].device_uuid].last_busy == start + 40


def test_device_metrics_are_served_from_the_first_collect_before_docker_answers(
    make_collector, inventory, sim_state, sim_inventory, clock, start
):
    empty = Inventory(lambda _cid: None, sim_inventory)  # Docker never answered: not ready
    collector = make_collector(docker_ok=lambda: False, inventory=empty)
    sim_state.set_device(sim_inventory[0].index, busy=True)
    clock.current = start + 10
    assert collector.collect_once() is True
    snapshot = collector.snapshot
    assert snapshot.timestamp == 0.0 and snapshot.containers == ()
    assert len(snapshot.devices) == len(sim_inventory)
    assert {d.device.device_uuid for d in snapshot.devices if d.busy} >= {
        sim_inventory[0].device_uuid
    }
    reg = CollectorRegistry()
    reg.register(SnapshotCollector(lambda: snapshot, ErrorCounters(), version="t", backend="sim"))
    uuid = sim_inventory[0].device_uuid
    assert reg.get_sample_value("ds01_gpu_device_busy", {"device_uuid": uuid}) == 1
    assert reg.get_sample_value("ds01_exporter_last_collect_timestamp_seconds") == 0


def test_a_restart_keeps_runtime_clocks_and_resumes_idle_clocks_from_the_restart(
    make_collector, sim_state, sim_inventory, clock, start
):
    sim_state.set_device(sim_inventory[0].index, busy=True)
    first = make_collector()
    clock.current = start + 10
    first.collect_once()
    first.stop()
    before = by_name(first.snapshot)
    sim_state.set_device(sim_inventory[0].index, busy=False)
    clock.advance(120)  # the exporter was down for two minutes
    restart = clock.current
    second = make_collector()
    second.collect_once()
    after = by_name(second.snapshot)
    for name in ("alice-train", "bob-dev"):
        assert after[name].first_start == before[name].first_start
        assert after[name].runtime_deadline == before[name].runtime_deadline
        assert after[name].last_busy == restart
        assert after[name].idle_deadline == restart + 600


def test_exporter_downtime_longer_than_the_idle_timeout_never_puts_the_deadline_in_the_past(
    make_collector, clock, start
):
    first = make_collector()
    clock.current = start + 10
    first.collect_once()
    first.stop()
    clock.advance(45 * 60)  # down 45 minutes, idle timeout 10 minutes, idle warning 10 minutes
    restart = clock.current
    second = make_collector()
    second.collect_once()
    for state in second.snapshot.containers:
        assert state.idle_deadline >= restart + 600
    devices = second.snapshot.devices
    assert all(d.last_busy >= restart for d in devices)


def test_removed_containers_lose_their_clocks(
    make_collector, inventory, managed, tmp_path, clock, start
):
    collector = make_collector()
    clock.current = start + 10
    collector.collect_once()
    assert managed["Id"] in ClockStore(tmp_path / "state").load().containers
    inventory.remove(managed["Id"])
    collector.collect_once()
    saved = ClockStore(tmp_path / "state").load()
    assert managed["Id"] not in saved.containers


def test_the_published_duration_covers_the_whole_cycle_rendering_included(
    make_collector, clock, start
):
    clock.current = start + 10
    rendered = []

    def slow_render(snapshot):
        time.sleep(0.2)  # stands for pre-rendering /metrics, which is part of the cycle
        rendered.append(snapshot)

    collector = make_collector(on_publish=slow_render)
    assert collector.collect_once()
    assert collector.snapshot.duration >= 0.2
    assert rendered[0].containers is collector.snapshot.containers  # the same series


def test_clocks_that_only_moved_forward_are_saved_once_a_minute_new_ones_at_once(
    make_collector, sim_state, sim_inventory, clock, start, tmp_path
):
    sim_state.set_device(sim_inventory[0].index, busy=True)  # alice-train's: its clock moves
    store = ClockStore(tmp_path / "state")
    collector = make_collector()
    clock.current = start + 10
    collector.collect_once()
    first = store.load().containers
    assert first  # new clocks: saved by the cycle that made them
    clock.current = start + 20
    collector.collect_once()
    moved = {c.facts.container_id: c.last_busy for c in collector.snapshot.containers}
    assert any(moved[cid] != saved.last_busy for cid, saved in first.items() if cid in moved)
    assert store.load().containers == first  # only last-busy times moved: not saved yet

    clock.current = start + 10 + SAVE_EVERY
    collector.collect_once()
    saved = store.load().containers
    for state in collector.snapshot.containers:
        assert saved[state.facts.container_id].last_busy == state.last_busy

    clock.current += 5
    collector.collect_once()
    collector.stop()  # stopping saves whatever moved since
    saved = store.load().containers
    for state in collector.snapshot.containers:
        assert saved[state.facts.container_id].last_busy == state.last_busy
