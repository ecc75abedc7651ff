"""Three nodes on one machine, one PostgreSQL quota store, one Prometheus and Alertmanager:
the cluster that `ds01 up --nodes 3` starts, driven through each node's gateway with the real
docker CLI as unprivileged users.

Quotas count a user's devices on every node; an idle container is stopped by its own node's
enforcer only; a dead allocator on one node leaves the others granting; a PostgreSQL outage
(DS01_E2E_PG_OUTAGE seconds, default 30) refuses new grants with a clear message and loses
nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from allocator.client import AllocatorClient
from ds01.cluster_up import ClusterEndpoints, ClusterOptions, ClusterSupervisor
from ds01.supervisor import Endpoints
from tests.e2e.conftest import E2E_TIMINGS, POLICY, TOPOLOGY
from tests.gateway.clients import CompatUser, run_as
from tests.harness.components import require_cluster_stack
from tests.harness.containers import remove_named
from tests.harness.waiting import eventually

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

IMAGE = "ds01/busybox:latest"
NODES = ("node-1", "node-2", "node-3")
OUTAGE = float(os.environ.get("DS01_E2E_PG_OUTAGE", "30"))


@dataclass
class Cluster:
    supervisor: ClusterSupervisor
    endpoints: ClusterEndpoints
    started_in: float  # seconds from start() to every part healthy

    def node(self, name: str) -> Endpoints:
        return self.endpoints.nodes[name]


@pytest.fixture(scope="module")
def cluster(unprivileged_users) -> Iterator[Cluster]:
    require_cluster_stack()
    keep = os.environ.get("DS01_E2E_STATE")  # a folder to keep for a look afterwards
    state = Path(keep or tempfile.mkdtemp(prefix="ds01c-", dir="/tmp"))  # short: socket paths
    state.mkdir(parents=True, exist_ok=True)
    os.chmod(state, 0o755)  # unprivileged users reach each node's gateway socket
    (state / "topology.yaml").write_text(TOPOLOGY)
    policy = state / "ds01.yaml"
    policy.write_text(POLICY % (state / "topology.yaml"))
    supervisor = ClusterSupervisor(
        ClusterOptions(policy, state / "up", len(NODES), E2E_TIMINGS, log_level="DEBUG")
    )
    began = time.monotonic()
    endpoints = supervisor.start()
    running = Cluster(supervisor, endpoints, time.monotonic() - began)
    print(f"\ncluster of {len(NODES)} nodes started in {running.started_in:.1f}s")
    try:
        yield running
    finally:
        pids = [child.pid for child in supervisor.children]  # restarted ones included
        supervisor.stop()
        if not keep:
            shutil.rmtree(state, ignore_errors=True)
    left = [pid for pid in pids if pid is not None and _alive(pid)]
    assert not left, f"processes {left} left running after teardown"


@pytest.fixture
def made(cluster) -> Iterator[list[tuple[str, str]]]:
    """(node, container name) of what a test made: removed at teardown, the simulated activity
    forgotten and the allocations seen released on every node, so the next test starts empty."""
    names: list[tuple[str, str]] = []
    yield names
    import docker

    for node, name in names:
        client = docker.DockerClient(base_url=cluster.node(node).docker_host)
        try:
            remove_named(client, name)
        finally:
            client.close()
    for node in NODES:  # a stale pid on a simulated device would read as a foreign process
        sim = [sys.executable, "-m", "ds01.cli", "sim-gpu", "--state-file"]
        subprocess.run(
            [*sim, cluster.node(node).sim_state, "clear"], check=True, capture_output=True
        )
    for node in NODES:
        if not cluster.supervisor.node(node).failed_children():
            eventually(lambda n=node: not live_allocations(cluster, n), 30, f"{node} released")


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def docker_as(cluster: Cluster, user: CompatUser, node: str, *argv: str):
    """The real docker CLI as `user`, with the DOCKER_HOST the banner prints for `node`."""
    env = {"DOCKER_HOST": cluster.node(node).gateway_host}
    return run_as(user, ["docker", *argv], env=env, timeout=120)


def gpu_run(cluster, made, user: CompatUser, node: str, tag: str):
    name = f"{tag}-{uuid.uuid4().hex[:6]}"
    made.append((node, name))
    argv = ("run", "-d", "--name", name, "--gpus", "1", "--network", "none", IMAGE, "sleep", "3600")
    return name, docker_as(cluster, user, node, *argv)


def container(cluster: Cluster, node: str, name: str):
    import docker

    client = docker.DockerClient(base_url=cluster.node(node).docker_host)
    try:
        return client.containers.get(name)
    finally:
        client.close()


def keep_busy(cluster: Cluster, node: str, name: str) -> None:
    """Its simulated device busy with its process on it, so no idle stop interferes."""
    found = container(cluster, node, name)
    device = found.labels["ds01.gpu.devices"]
    argv = [sys.executable, "-m", "ds01.cli", "sim-gpu", "--state-file"]
    argv += [cluster.node(node).sim_state, "set", device, "--busy"]
    argv += ["--pid", str(found.attrs["State"]["Pid"])]
    subprocess.run(argv, check=True, capture_output=True, timeout=60)


def live_allocations(cluster: Cluster, node: str) -> list[dict]:
    status, answer = AllocatorClient(cluster.node(node).allocator_socket, timeout=10).call(
        "GET", "/v1/allocations?all=1"
    )
    assert status == 200, answer
    return answer["allocations"]


def audit(cluster: Cluster, node: str) -> list[dict]:
    path = Path(cluster.node(node).audit_log)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# -- quotas ---------------------------------------------------------------------------------


def test_quota_counts_a_users_devices_on_every_node(cluster, made, unprivileged_users):
    alice = unprivileged_users[0]
    held = {}
    for node in ("node-1", "node-2"):
        name, done = gpu_run(cluster, made, alice, node, "quota")
        assert done.returncode == 0, done.stderr
        keep_busy(cluster, node, name)
        held[node] = container(cluster, node, name).labels
        assert held[node]["ds01.user"] == alice.name
    devices = {labels["ds01.gpu.devices"] for labels in held.values()}
    assert len(devices) == 2, "each node hands out its own devices"

    _, refused = gpu_run(cluster, made, alice, "node-3", "quota")
    assert refused.returncode != 0
    assert f"GPU quota exceeded: {alice.name} (group student) holds 2 of 2 GPUs" in refused.stderr
    assert "this request asks for 1 more" in refused.stderr


def test_one_prometheus_sees_every_node_and_gpu_status_groups_them(
    cluster, made, unprivileged_users
):
    alice = unprivileged_users[0]
    name, done = gpu_run(cluster, made, alice, "node-3", "seen")
    assert done.returncode == 0, done.stderr
    keep_busy(cluster, "node-3", name)
    device = container(cluster, "node-3", name).labels["ds01.gpu.devices"]
    argv = [sys.executable, "-m", "ds01.gpu_status", "--json"]
    argv += ["--prometheus-url", cluster.endpoints.prometheus]

    def status() -> dict | None:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        document = json.loads(done.stdout) if done.returncode == 0 else None
        if document is None:
            return None
        held = [d for d in document["devices"] if d["device_uuid"] == device]
        nodes = {d["node"] for d in document["devices"]}
        return document if held and alice.name in held[0]["users"] and len(nodes) == 3 else None

    # Scrapes land one target at a time: wait until every node's devices are in.
    document = eventually(status, 30, f"gpu-status: every node, {alice.name} on node-3")
    by_node: dict[str, set[str]] = {}
    for row in document["devices"]:
        by_node.setdefault(row["node"], set()).add(row["device_uuid"])
    assert set(by_node) == set(NODES)
    assert all(len(uuids) == 2 for uuids in by_node.values()), by_node
    assert [n["node"] for n in document["summary"]["nodes"]] == list(NODES)
    [held] = [d for d in document["devices"] if d["device_uuid"] == device]
    assert held["node"] == "node-3"
    targets = requests.get(f"{cluster.endpoints.prometheus}/api/v1/targets", timeout=10).json()
    seen = {(t["labels"]["job"], t["labels"]["node"]) for t in targets["data"]["activeTargets"]}
    jobs = {"ds01-exporter", "ds01-allocator", "ds01-enforcer"}
    assert seen == {(job, node) for job in jobs for node in NODES}


# -- enforcement ----------------------------------------------------------------------------


def test_an_idle_container_is_stopped_by_its_own_nodes_enforcer_only(
    cluster, made, unprivileged_users
):
    bob = unprivileged_users[1]
    busy, done = gpu_run(cluster, made, bob, "node-1", "busy")
    assert done.returncode == 0, done.stderr
    keep_busy(cluster, "node-1", busy)
    idle, done = gpu_run(cluster, made, bob, "node-2", "idle")
    assert done.returncode == 0, done.stderr
    idle_id = container(cluster, "node-2", idle).id

    def stopped_on_node_2() -> list[dict]:
        return [
            r
            for r in audit(cluster, "node-2")
            if r.get("decision") == "stopped" and r.get("container_id") == idle_id
        ]

    [record] = eventually(stopped_on_node_2, 90, "node-2's enforcer stopping the idle one")
    assert record.get("reason") == "idle", record
    assert container(cluster, "node-2", idle).status == "exited"
    for other in ("node-1", "node-3"):
        about = [r for r in audit(cluster, other) if r.get("container_id") == idle_id]
        assert all(r.get("decision") == "not_mine" for r in about), (other, about)
    assert container(cluster, "node-1", busy).status == "running"


# -- failures -------------------------------------------------------------------------------


def test_a_dead_allocator_on_one_node_leaves_the_others_granting(cluster, made, unprivileged_users):
    alice, bob = unprivileged_users
    node_1 = cluster.supervisor.node("node-1")
    [allocator] = [c for c in node_1.children if c.name == "allocator"]
    try:
        allocator.signal(signal.SIGKILL)
        eventually(lambda: not allocator.running(), 30, "node-1's allocator gone")
        for user, node in ((alice, "node-2"), (bob, "node-3"), (bob, "node-2")):
            name, done = gpu_run(cluster, made, user, node, "after-kill")
            assert done.returncode == 0, (node, done.stderr)
            keep_busy(cluster, node, name)
        _, refused = gpu_run(cluster, made, alice, "node-1", "no-allocator")
        assert refused.returncode != 0
        assert "cannot reach the GPU allocator at" in refused.stderr, refused.stderr
        for node in ("node-2", "node-3"):
            assert not cluster.supervisor.node(node).failed_children()
            health = requests.get(f"{cluster.node(node).allocator_http}/healthz", timeout=5)
            assert health.ok
    finally:
        if not allocator.running():  # the later tests need node-1 whole again
            allocator.start()
            url = f"{cluster.node('node-1').allocator_http}/healthz"
            allocator.wait_until(lambda: requests.get(url, timeout=1).ok, 60, "healthy")


def test_a_postgres_outage_refuses_new_grants_clearly_and_loses_nothing(
    cluster, made, unprivileged_users
):
    alice, bob = unprivileged_users
    postgres = cluster.supervisor.postgres
    assert postgres is not None
    held_name, done = gpu_run(cluster, made, alice, "node-2", "held")
    assert done.returncode == 0, done.stderr
    keep_busy(cluster, "node-2", held_name)
    held = container(cluster, "node-2", held_name).labels
    allocator_pids = {
        node: [c.pid for c in cluster.supervisor.node(node).children if c.name == "allocator"]
        for node in NODES
    }

    began = time.monotonic()
    postgres.stop()
    try:
        _, refused = gpu_run(cluster, made, bob, "node-3", "outage")
        assert refused.returncode != 0
        assert "the allocation store (PostgreSQL at 127.0.0.1:" in refused.stderr, refused.stderr
        assert "is unavailable" in refused.stderr and "nothing was changed" in refused.stderr
        # Running containers and the gateways' other calls are untouched meanwhile.
        while time.monotonic() - began < OUTAGE:
            assert container(cluster, "node-2", held_name).status == "running"
            listed = docker_as(cluster, alice, "node-2", "ps", "--format", "{{.Names}}")
            assert listed.returncode == 0 and held_name in listed.stdout, listed
            time.sleep(min(2.0, max(0.0, OUTAGE - (time.monotonic() - began))))
    finally:
        postgres.start()

    def granted() -> bool:
        name, done = gpu_run(cluster, made, bob, "node-3", "recovered")
        if done.returncode == 0:
            keep_busy(cluster, "node-3", name)
        return done.returncode == 0

    eventually(granted, 60, "a new grant on node-3 after PostgreSQL came back", interval=1.0)
    status, answer = AllocatorClient(cluster.node("node-2").allocator_socket).call(
        "GET", f"/v1/allocations/{held['ds01.allocation']}"
    )
    assert status == 200, answer
    allocation = answer["allocation"]
    assert allocation["user"] == alice.name and allocation["state"] == "bound", allocation
    assert allocation["devices"] == held["ds01.gpu.devices"].split(",")
    for node, pids in allocator_pids.items():
        now = [c.pid for c in cluster.supervisor.node(node).children if c.name == "allocator"]
        assert now == pids, f"{node}'s allocator was restarted"


def test_each_nodes_token_opens_its_own_enforcer_only(cluster):
    own = Path(cluster.node("node-2").token_file).read_text().strip()
    other = Path(cluster.node("node-1").token_file).read_text().strip()
    assert own != other
    url = f"{cluster.node('node-2').enforcer}/alerts"

    def post(token: str) -> int:
        headers = {"Authorization": f"Bearer {token}"}
        return requests.post(url, data=b"{}", headers=headers, timeout=10).status_code

    assert post(other) == 401
    assert post(own) == 400  # past the door: an empty body is malformed, not unauthorised
