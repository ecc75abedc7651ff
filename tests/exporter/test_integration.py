"""The exporter as a real process, on the private dockerd with the sim GPU backend."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time

import pytest
import requests

from ds01.containers import parse_docker_time
from tests.exporter.conftest import IDLE_TIMEOUT, REPO
from tests.exporter.helpers import WAIT, parse, value
from tests.harness.containers import remove_container
from tests.harness.waiting import eventually

pytestmark = pytest.mark.integration

DEVICE_METRICS = {
    "ds01_gpu_device_info",
    "ds01_gpu_device_activity_ratio",
    "ds01_gpu_device_processes",
    "ds01_gpu_device_memory_used_bytes",
    "ds01_gpu_device_memory_total_bytes",
    "ds01_gpu_device_busy",
    "ds01_gpu_device_last_busy_timestamp_seconds",
}
CONTAINER_METRICS = {
    "ds01_container_info",
    "ds01_container_gpu_device",
    "ds01_container_start_time_seconds",
    "ds01_container_busy",
    "ds01_container_last_busy_timestamp_seconds",
    "ds01_container_idle_deadline_timestamp_seconds",
    "ds01_container_runtime_deadline_timestamp_seconds",
    "ds01_container_keep_alive",
}
HEALTH_METRICS = {
    "ds01_exporter_build_info",
    "ds01_exporter_collect_duration_seconds",
    "ds01_exporter_last_collect_timestamp_seconds",
    "ds01_exporter_collect_errors_total",
    "ds01_policy_reloads_total",
    "ds01_policy_loaded_timestamp_seconds",
}
CONTAINER_KEYS = {"container_id", "container", "user", "group", "type"}
RUNTIME_RESEARCHER = 48 * 3600.0


def shows(exporter, *ids: str, absent: tuple[str, ...] = ()):
    """A scrape in which every container in `ids` has series and none in `absent` does."""
    samples = exporter.scrape()
    present = {s.labels.get("container_id") for s in samples if s.name == "ds01_container_info"}
    if set(ids) <= present and not set(absent) & present:
        return samples
    return None


def started_at(container) -> float:
    container.reload()
    return parse_docker_time(container.attrs["State"]["StartedAt"])


def test_scrape_shows_exactly_the_contract_series(
    exporter_factory, containers, sim_state, sim_inventory
):
    exporter = exporter_factory()
    busy_dev, idle_dev = sim_inventory[0], sim_inventory[1]
    busy = containers(gpus=[busy_dev.device_uuid], labels={"ds01.user": "alice"})
    idle = containers(gpus=[idle_dev.device_uuid], labels={"ds01.user": "alice"})
    plain = containers()
    sim_state.set_device(busy_dev.index, busy=True, pids=[busy.attrs["State"]["Pid"]])
    sim_state.set_device(idle_dev.index, busy=False)

    first = eventually(
        lambda: (
            (s := shows(exporter, busy.id, idle.id))
            and value(s, "ds01_container_busy", container_id=busy.id) == 1
            and s
        ),
        WAIT,
        "both GPU containers with the busy one busy",
    )

    names = {s.name for s in first}
    assert names == DEVICE_METRICS | CONTAINER_METRICS | HEALTH_METRICS
    for sample in first:
        if sample.name == "ds01_container_info":
            assert set(sample.labels) == CONTAINER_KEYS | {"image", "managed", "allocation"}
        elif sample.name == "ds01_container_gpu_device":
            assert set(sample.labels) == CONTAINER_KEYS | {"device_uuid"}
        elif sample.name.startswith("ds01_container_"):
            assert set(sample.labels) == CONTAINER_KEYS
        elif sample.name == "ds01_gpu_device_info":
            assert set(sample.labels) == {
                "device_uuid", "gpu_uuid", "gpu_index", "index", "gi_id",
                "profile", "model", "kind",
            }  # fmt: skip
        elif sample.name.startswith("ds01_gpu_device_"):
            assert set(sample.labels) == {"device_uuid"}
    assert {s.labels["container_id"] for s in first if "container_id" in s.labels} == {
        busy.id,
        idle.id,
    }, "no series for the container without GPU access"
    assert plain.id not in {s.labels.get("container_id") for s in first}

    info = [
        s for s in first if s.name == "ds01_container_info" and s.labels["container_id"] == idle.id
    ]
    assert info[0].labels == {
        "container_id": idle.id,
        "container": idle.name,
        "user": "alice",
        "group": "researcher",
        "type": "docker",
        "image": "ds01/busybox:latest",
        "managed": "false",
        "allocation": "",
    }
    assert value(first, "ds01_container_gpu_device", container_id=busy.id) == 1
    assert value(first, "ds01_container_gpu_device", device_uuid=busy_dev.device_uuid) == 1
    assert value(first, "ds01_gpu_device_busy", device_uuid=busy_dev.device_uuid) == 1
    assert value(first, "ds01_gpu_device_busy", device_uuid=idle_dev.device_uuid) == 0
    assert value(first, "ds01_gpu_device_processes", device_uuid=busy_dev.device_uuid) == 1
    assert value(first, "ds01_container_busy", container_id=idle.id) == 0

    # The idle container: last busy = its first start, deadline = that + idle timeout.
    idle_start = started_at(idle)
    assert value(first, "ds01_container_start_time_seconds", container_id=idle.id) == pytest.approx(
        idle_start, abs=1e-3
    )
    assert value(
        first, "ds01_container_last_busy_timestamp_seconds", container_id=idle.id
    ) == pytest.approx(idle_start, abs=1e-3)
    idle_deadline = value(
        first, "ds01_container_idle_deadline_timestamp_seconds", container_id=idle.id
    )
    assert idle_deadline == pytest.approx(idle_start + IDLE_TIMEOUT, abs=1e-3)
    assert value(
        first, "ds01_container_runtime_deadline_timestamp_seconds", container_id=idle.id
    ) == pytest.approx(idle_start + RUNTIME_RESEARCHER, abs=1e-3)

    # The busy container's last busy advances; the idle one's deadline stays put.
    busy_before = value(first, "ds01_container_last_busy_timestamp_seconds", container_id=busy.id)
    later = eventually(
        lambda: (
            (s := exporter.scrape())
            and value(s, "ds01_container_last_busy_timestamp_seconds", container_id=busy.id)
            > busy_before
            and s
        ),
        WAIT,
        "the busy container's last busy to advance",
    )
    assert (
        value(later, "ds01_container_idle_deadline_timestamp_seconds", container_id=idle.id)
        == idle_deadline
    )

    remove_container(busy)
    gone = eventually(lambda: shows(exporter, idle.id, absent=(busy.id,)), WAIT, "removal")
    assert busy.id not in {s.labels.get("container_id") for s in gone}


def test_clocks_survive_an_exporter_restart(exporter_factory, containers, sim_state, sim_inventory):
    busy_dev, idle_dev = sim_inventory[0], sim_inventory[4]
    busy = containers(gpus=[busy_dev.device_uuid])
    idle = containers(gpus=[idle_dev.device_uuid])
    sim_state.set_device(busy_dev.index, busy=True)

    first = exporter_factory()
    before = eventually(lambda: shows(first, busy.id, idle.id), WAIT, "containers listed")
    first.stop()
    second = exporter_factory()
    after = eventually(lambda: shows(second, busy.id, idle.id), WAIT, "containers listed again")

    for cid in (busy.id, idle.id):
        for name in (
            "ds01_container_start_time_seconds",
            "ds01_container_runtime_deadline_timestamp_seconds",
        ):
            assert value(after, name, container_id=cid) == value(before, name, container_id=cid)
    # Idle clocks resume from the restart (time no exporter saw is never idle time): they
    # move forward, never back, and the deadline stays one idle timeout after last busy.
    last, deadline = (
        "ds01_container_last_busy_timestamp_seconds",
        "ds01_container_idle_deadline_timestamp_seconds",
    )
    for cid in (busy.id, idle.id):
        assert value(after, last, container_id=cid) >= value(before, last, container_id=cid)
        timeout_after = value(after, deadline, container_id=cid) - value(
            after, last, container_id=cid
        )
        timeout_before = value(before, deadline, container_id=cid) - value(
            before, last, container_id=cid
        )
        assert timeout_after == pytest.approx(timeout_before)
    device_last = "ds01_gpu_device_last_busy_timestamp_seconds"
    uuid = idle_dev.device_uuid
    assert value(after, device_last, device_uuid=uuid) >= value(
        before, device_last, device_uuid=uuid
    )


def test_keep_alive_file_moves_the_idle_deadline_to_infinity(
    exporter_factory, containers, sim_inventory, tmp_path
):
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    mounted = containers(
        gpus=[sim_inventory[2].device_uuid],
        volumes={str(workspace): {"bind": "/workspace", "mode": "rw"}},
    )
    unmounted = containers(gpus=[sim_inventory[3].device_uuid])
    exporter = exporter_factory()
    ids = (mounted.id, unmounted.id)

    def deadlines(samples):
        return {
            cid: (
                value(samples, "ds01_container_idle_deadline_timestamp_seconds", container_id=cid),
                value(samples, "ds01_container_keep_alive", container_id=cid),
                value(samples, "ds01_container_last_busy_timestamp_seconds", container_id=cid),
            )
            for cid in ids
        }

    before = deadlines(eventually(lambda: shows(exporter, *ids), WAIT, "containers listed"))
    for deadline, keep_alive, last_busy in before.values():
        assert keep_alive == 0
        assert deadline == last_busy + IDLE_TIMEOUT

    (workspace / ".keep-alive").touch()  # through the host's view of the bind mount
    unmounted.exec_run(["touch", "/workspace/.keep-alive"])  # only the archive API can see it
    eventually(
        lambda: all(d == math.inf and k == 1 for d, k, _ in deadlines(exporter.scrape()).values()),
        WAIT,
        "both idle deadlines at +Inf",
    )

    (workspace / ".keep-alive").unlink()
    unmounted.exec_run(["rm", "/workspace/.keep-alive"])

    def without_keep_alive():
        current = deadlines(exporter.scrape())
        return current if all(k == 0 for _, k, _ in current.values()) else None

    restored = eventually(without_keep_alive, WAIT, "keep-alive gone")
    assert restored == before

    stale = workspace / ".keep-alive"
    stale.touch()
    old = time.time() - 2 * 3600  # older than keep_alive.max_age (1h)
    os.utime(stale, (old, old))
    touched = time.time()
    # A collect cycle that began after the file went stale (the host mount is read every cycle).
    after = eventually(
        lambda: (
            (
                value(s := exporter.scrape(), "ds01_exporter_last_collect_timestamp_seconds")
                > touched
            )
            and s
        ),
        WAIT,
        "a collect cycle after the stale touch",
    )
    assert deadlines(after)[mounted.id] == before[mounted.id]


def test_docker_outage_serves_the_last_snapshot_then_catches_up(
    exporter_factory, docker_proxy, containers, sim_inventory, sim_state
):
    old = containers(gpus=[sim_inventory[0].device_uuid])
    exporter = exporter_factory(docker_host=docker_proxy.url)
    eventually(lambda: shows(exporter, old.id), WAIT, "container listed")

    docker_proxy.cut()
    eventually(
        lambda: (
            value(exporter.scrape(), "ds01_exporter_collect_errors_total", source="docker") >= 1
        ),
        WAIT,
        "the outage to be counted",
    )
    stale = exporter.scrape()
    stamp = value(stale, "ds01_exporter_last_collect_timestamp_seconds")
    remove_container(old)
    new = containers(gpus=[sim_inventory[1].device_uuid])
    busy_uuid = sim_inventory[3].device_uuid
    sim_state.set_device(sim_inventory[3].index, busy=True)
    # Collect cycles go on without Docker: devices are fresh (the signal that cycles ran) ...
    during = eventually(
        lambda: (
            value(s := exporter.scrape(), "ds01_gpu_device_busy", device_uuid=busy_uuid) == 1 and s
        ),
        WAIT,
        "a collect cycle during the outage",
    )
    # ... while containers stay the last good picture, with its timestamp.
    assert value(during, "ds01_exporter_last_collect_timestamp_seconds") == stamp
    assert value(during, "ds01_container_info", container_id=old.id) == 1
    assert value(during, "ds01_gpu_device_info", device_uuid=sim_inventory[0].device_uuid) == 1
    assert exporter.state()["docker_connected"] is False

    docker_proxy.restore()
    after = eventually(
        lambda: shows(exporter, new.id, absent=(old.id,)), WAIT, "inventory catch-up"
    )
    assert value(after, "ds01_exporter_last_collect_timestamp_seconds") > stamp
    assert value(after, "ds01_exporter_collect_errors_total", source="docker") >= 1


def test_device_metrics_are_served_before_docker_ever_answers(
    exporter_factory, sim_state, sim_inventory, tmp_path
):
    sim_state.set_device(sim_inventory[2].index, busy=True)
    exporter = exporter_factory(docker_host=f"unix://{tmp_path}/absent.sock")

    device = sim_inventory[2].device_uuid
    samples = eventually(
        lambda: (
            (value(s := exporter.scrape(), "ds01_gpu_device_busy", device_uuid=device) == 1)
            and (value(s, "ds01_exporter_collect_errors_total", source="docker") or 0) >= 1
            and s
        ),
        WAIT,
        "device series while Docker is down",
    )
    for each in sim_inventory:
        assert value(samples, "ds01_gpu_device_info", device_uuid=each.device_uuid) == 1
    assert value(samples, "ds01_exporter_last_collect_timestamp_seconds") == 0
    assert not [x for x in samples if x.name == "ds01_container_info"]
    assert exporter.state()["docker_connected"] is False


def test_sighup_reloads_the_policy_and_refuses_a_bad_one(
    exporter_factory, policy_file, containers, sim_inventory
):
    box = containers(gpus=[sim_inventory[1].device_uuid])
    exporter = exporter_factory()
    eventually(lambda: shows(exporter, box.id), WAIT, "container listed")

    def idle_timeout_in_force() -> float:
        samples = exporter.scrape()
        deadline = value(
            samples, "ds01_container_idle_deadline_timestamp_seconds", container_id=box.id
        )
        last = value(samples, "ds01_container_last_busy_timestamp_seconds", container_id=box.id)
        return deadline - last

    def reloads(result: str) -> float:
        return value(exporter.scrape(), "ds01_policy_reloads_total", result=result)

    assert idle_timeout_in_force() == IDLE_TIMEOUT
    policy_file.write_text(policy_file.read_text().replace("idle_timeout: 10m", "idle_timeout: x"))
    os.kill(exporter.child.process.pid, signal.SIGHUP)
    eventually(lambda: reloads("refused") == 1, WAIT, "the bad file refused")
    assert idle_timeout_in_force() == IDLE_TIMEOUT  # the last good policy stays in force
    assert "idle_timeout" in exporter.child.log_path.read_text()

    policy_file.write_text(policy_file.read_text().replace("idle_timeout: x", "idle_timeout: 20m"))
    os.kill(exporter.child.process.pid, signal.SIGHUP)
    eventually(lambda: reloads("applied") == 1, WAIT, "the good file applied")
    eventually(lambda: idle_timeout_in_force() == 1200.0, WAIT, "the new idle timeout")
    assert exporter.child.process.poll() is None


def test_once_prints_the_metrics_and_exits(
    tmp_path, policy_file, dockerd, containers, sim_inventory
):
    gpu = containers(gpus=[sim_inventory[4].device_uuid])
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "exporter",
            "--once",
            f"--policy={policy_file}",
            f"--state-dir={tmp_path / 'once'}",
            f"--docker-host={dockerd.url}",
            "--gpu-backend=sim",
            f"--sim-state={tmp_path / 'sim.json'}",
        ],  # fmt: skip
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    samples = parse(result.stdout)
    assert value(samples, "ds01_container_info", container_id=gpu.id) == 1, result.stdout
    assert value(samples, "ds01_exporter_build_info", backend="sim") == 1
    assert (tmp_path / "once" / "exporter-clocks.json").exists()


def test_prometheus_scrapes_the_exporter(
    exporter_factory, prometheus_factory, containers, sim_inventory, tmp_path
):
    """Prometheus (OpenMetrics, gzip) ingests the series, +Inf deadlines included."""
    workspace = tmp_path / "ka"
    workspace.mkdir()
    (workspace / ".keep-alive").touch()
    kept = containers(
        gpus=[sim_inventory[0].device_uuid],
        volumes={str(workspace): {"bind": "/workspace", "mode": "rw"}},
    )
    exporter = exporter_factory()
    eventually(lambda: shows(exporter, kept.id), WAIT, "container listed")
    target = exporter.url.removeprefix("http://")
    prometheus = prometheus_factory(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n  - job_name: ds01-exporter\n"
        f"    static_configs: [{{targets: ['{target}']}}]\n"
    )

    def query(expr: str):
        answer = requests.get(f"{prometheus.url}/api/v1/query", params={"query": expr}, timeout=5)
        return answer.json()["data"]["result"]

    result = eventually(
        lambda: query(
            f'ds01_container_idle_deadline_timestamp_seconds{{container_id="{kept.id}"}}'
        ),
        WAIT,
        "Prometheus to ingest the container series",
    )
    assert result[0]["value"][1] == "+Inf"
    assert query('up{job="ds01-exporter"}')[0]["value"][1] == "1"
    assert len(query("ds01_gpu_device_info")) == len(sim_inventory)
    errors = query("ds01_exporter_collect_errors_total")
    assert {e["metric"]["source"] for e in errors} == {
        "docker",
        "extensions",
        "gpu",
        "keepalive",
        "state",
    }
