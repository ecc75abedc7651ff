"""The allocator with the private dockerd: container CLI, wrapper, lifecycle and restart."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from allocator import container_cli
from allocator.client import AllocatorClient, Refused
from ds01.stack import ChildProcess
from tests.allocator.conftest import WAIT, write_policy
from tests.harness.components import require_binary
from tests.harness.containers import remove_container
from tests.harness.waiting import eventually

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent


@pytest.fixture
def stack(allocator_factory, docker_client, dockerd, busybox_image, short_dir):
    """An allocator that follows the private dockerd, and a `container` command bound to both."""

    def make(**policy):
        runtime = allocator_factory(policy=policy, docker=docker_client)
        home = short_dir / "home"
        home.mkdir(exist_ok=True)

        def container(*args: str) -> int:
            common = ["--socket", str(runtime.socket_path), "--docker-host", dockerd.url]
            if args[0] == "deploy":
                args = (
                    *args,
                    "--image",
                    busybox_image,
                    "--network",
                    "none",
                    "--home",
                    str(home),
                )
            if args[0] in ("list", "ls"):
                args = (*args, "--exporter-url", "http://127.0.0.1:9")
            return container_cli.main([*common, *args])

        return runtime, AllocatorClient(str(runtime.socket_path)), container

    return make


def _allocation_of(docker_client, name):
    return docker_client.containers.get(name).labels["ds01.allocation"]


def test_deploy_runs_on_an_allocated_mig_device_with_labels_and_retire_frees_it(
    stack, docker_client, capsys
):
    runtime, client, container = stack()
    assert container("deploy", "job1") == 0
    attrs = docker_client.api.inspect_container("job1")
    [request] = attrs["HostConfig"]["DeviceRequests"]
    [device] = request["DeviceIDs"]
    assert device.startswith("MIG-") and attrs["State"]["Running"]
    labels = attrs["Config"]["Labels"]
    assert labels["ds01.managed"] == "true" and labels["ds01.user"] == "root"
    assert labels["ds01.gpu.devices"] == device and labels["ds01.type"] == "ds01"
    alloc_id = labels["ds01.allocation"]
    bound = eventually(
        lambda: [a for a in runtime.allocator.live() if a.id == alloc_id and a.state == "bound"],
        WAIT,
        "allocation bound through the events stream",
    )
    assert bound[0].container_id == attrs["Id"] and bound[0].devices == (device,)

    assert container("ls") == 0
    out = capsys.readouterr().out
    assert "job1" in out and "running" in out and "(1g.18gb)" in out

    assert container("retire", "job1") == 0
    assert client.get(alloc_id)["state"] == "released"
    assert [d["state"] for d in client.devices() if d["device_uuid"] == device] == ["free"]
    assert not docker_client.containers.list(all=True, filters={"name": "job1"})


def test_a_student_at_2_of_2_is_refused_at_once(stack, capsys):
    _, _, container = stack(users={"root": "student"})
    assert container("deploy", "s1") == 0
    assert container("deploy", "s2") == 0
    capsys.readouterr()
    assert container("deploy", "s3") == 1
    err = capsys.readouterr().err
    assert "holds 2 of 2" in err
    for name in ("s1", "s2"):
        container("retire", name)


def test_stop_holds_the_device_then_frees_it(stack, docker_client):
    runtime, client, container = stack(gpu_hold_after_stop="1s")
    assert container("deploy", "held1") == 0
    alloc_id = _allocation_of(docker_client, "held1")
    eventually(lambda: client.get(alloc_id)["state"] == "bound", WAIT, "bound")
    assert container("stop", "held1") == 0
    eventually(lambda: client.get(alloc_id)["state"] == "held", WAIT, "held after stop")
    eventually(lambda: client.get(alloc_id)["state"] == "released", WAIT, "hold expiry")
    assert client.get(alloc_id)["release_reason"] == "hold_expired"
    container("retire", "held1")


def test_removing_the_container_frees_the_device_at_once(stack, docker_client):
    runtime, client, container = stack()
    assert container("deploy", "rm1") == 0
    alloc_id = _allocation_of(docker_client, "rm1")
    remove_container(docker_client.containers.get("rm1"))  # plain docker, no retire
    eventually(lambda: client.get(alloc_id)["state"] == "released", WAIT, "freed on destroy")
    assert client.get(alloc_id)["release_reason"] == "container_removed"


def test_a_full_inventory_queues_three_waiters_served_in_fifo_order_on_retire(stack, docker_client):
    runtime, client, container = stack(gpu_wait="60s")
    assert container("deploy", "big0", "--profile", "3g.71gb") == 0
    finished: list[str] = []
    threads = []
    for name in ("big1", "big2", "big3"):
        thread = threading.Thread(
            target=lambda n=name: (
                container("deploy", n, "--profile", "3g.71gb") == 0 and finished.append(n)
            )
        )
        thread.start()
        threads.append(thread)
        expected = len(threads)
        eventually(lambda e=expected: len(runtime.allocator.queue) == e, WAIT, f"{name} queued")
    for previous in ("big0", "big1", "big2"):
        count = len(finished)
        assert container("retire", previous) == 0
        eventually(lambda c=count: len(finished) == c + 1, 30, "next deploy")
    for thread in threads:
        thread.join(10)
    assert finished == ["big1", "big2", "big3"]
    container("retire", "big3")


def _docker_env(runtime, dockerd) -> dict[str, str]:
    return {
        **os.environ,
        "DOCKER_HOST": dockerd.url,
        "DS01_ALLOCATOR_SOCKET": str(runtime.socket_path),
        "DS01_REAL_DOCKER": require_binary("docker"),
    }


def test_wrapper_turns_gpus_all_into_one_allocated_device_with_labels(
    stack, docker_client, dockerd, busybox_image
):
    runtime, client, _ = stack()
    env = _docker_env(runtime, dockerd)
    run = subprocess.run(
        [BIN / "ds01-docker", "run", "-d", "--network", "none", "--name", "wrapped",
         "--gpus", "all", "-l", "ds01.user=mallory", busybox_image, "sleep", "3600"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    try:
        attrs = docker_client.api.inspect_container("wrapped")
        [request] = attrs["HostConfig"]["DeviceRequests"]
        assert len(request["DeviceIDs"]) == 1
        labels = attrs["Config"]["Labels"]
        assert labels["ds01.user"] == "root"  # the forged label was overwritten
        assert labels["ds01.managed"] == "true" and labels["ds01.type"] == "docker"
        assert labels["ds01.gpu.devices"] == request["DeviceIDs"][0]
        alloc_id = labels["ds01.allocation"]
        eventually(lambda: client.get(alloc_id)["state"] == "bound", WAIT, "bound")
        assert client.get(alloc_id)["devices"] == request["DeviceIDs"]
        # ... and says so on stderr, naming the device as users type it, not its UUID
        [device] = [d for d in client.devices() if d["device_uuid"] == request["DeviceIDs"][0]]
        note = f"ds01: --gpus all gives one device here: {device['index']} ({device['profile']})"
        assert note in run.stderr and "MIG-" not in run.stderr
    finally:
        remove_container(docker_client.containers.get("wrapped"))


def test_wrapper_gives_a_two_device_request_to_docker_in_a_form_it_accepts(
    stack, docker_client, dockerd, busybox_image
):
    runtime, _, _ = stack()
    env = _docker_env(runtime, dockerd)
    run = subprocess.run(
        [BIN / "ds01-docker", "run", "-d", "--network", "none", "--name", "pair",
         "--gpus", '"device=0,1"', busybox_image, "sleep", "3600"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    try:
        assert run.returncode == 0, run.stderr
        attrs = docker_client.api.inspect_container("pair")
        [request] = attrs["HostConfig"]["DeviceRequests"]
        assert len(request["DeviceIDs"]) == 2
        assert attrs["Config"]["Labels"]["ds01.gpu.devices"] == ",".join(request["DeviceIDs"])
    finally:
        subprocess.run([require_binary("docker"), "rm", "-f", "pair"], env=env, capture_output=True)


def test_a_failed_docker_run_after_a_grant_releases_the_allocation_at_once(
    stack, docker_client, dockerd, busybox_image
):
    runtime, client, _ = stack()  # reservation_ttl 60s: only the wrapper can free it sooner
    env = _docker_env(runtime, dockerd)
    taken = docker_client.containers.run(
        busybox_image, ["sleep", "3600"], name="taken", detach=True, network_mode="none"
    )
    try:
        run = subprocess.run(
            [BIN / "ds01-docker", "run", "-d", "--network", "none", "--name", "taken",
             "--gpus", "1", busybox_image, "sleep", "3600"],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert run.returncode == 125, run.stderr
        assert "Conflict" in run.stderr or "already in use" in run.stderr
        assert "released GPU allocation" in run.stderr
        assert client.allocations(everyone=True) == []  # live ones only: nothing is held
        assert not runtime.allocator.live()
    finally:
        remove_container(taken)


def test_a_container_that_ran_and_failed_keeps_its_allocation(
    stack, docker_client, dockerd, busybox_image
):
    runtime, client, _ = stack()
    env = _docker_env(runtime, dockerd)
    run = subprocess.run(
        [BIN / "ds01-docker", "run", "--network", "none", "--name", "failing",
         "--gpus", "1", busybox_image, "sleep", "not-a-number"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    try:
        assert run.returncode == 1, run.stderr  # the container's own exit code
        assert "released" not in run.stderr
        alloc_id = docker_client.containers.get("failing").labels["ds01.allocation"]
        assert client.get(alloc_id)["state"] in ("bound", "held")
    finally:
        remove_container(docker_client.containers.get("failing"))


def test_wrapper_passes_everything_else_through_unchanged(stack, dockerd):
    runtime, _, _ = stack()
    env = _docker_env(runtime, dockerd)
    for args in (["ps"], ["ps", "-a", "--format", "{{.Names}}"], ["inspect", "no-such-thing"]):
        real = subprocess.run([require_binary("docker"), *args], env=env, capture_output=True)
        wrapped = subprocess.run([BIN / "ds01-docker", *args], env=env, capture_output=True)
        assert (wrapped.returncode, wrapped.stdout, wrapped.stderr) == (
            real.returncode,
            real.stdout,
            real.stderr,
        )


def test_wrapper_reports_a_refusal_and_runs_nothing(stack, dockerd, busybox_image):
    runtime, _, _ = stack()
    env = _docker_env(runtime, dockerd)
    run = subprocess.run(
        [BIN / "ds01-docker", "run", "--rm", "--gpus", "9", busybox_image, "true"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 125
    assert run.stderr.startswith("ds01: asked for 9")


def _metrics_text(sock: Path) -> str:
    """GET /metrics over the allocator's Unix socket (HTTP/1.0: the server closes after)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(10)
        conn.connect(str(sock))
        conn.sendall(b"GET /metrics HTTP/1.0\r\nHost: allocator\r\n\r\n")
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode()


def _sample(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text.split("\r\n\r\n", 1)[1]):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    raise AssertionError(f"no sample {name}{labels}")


def test_an_allocator_started_while_docker_is_down_follows_docker_once_it_answers(
    short_dir, dockerd, docker_client, busybox_image
):
    folder = short_dir / "late"
    folder.mkdir()
    late_socket = folder / "docker.sock"  # absent: Docker is down when the allocator starts
    policy = write_policy(folder)
    sock = folder / "s.sock"
    argv = [
        str(BIN / "ds01"), "allocator", "--policy", str(policy), "--state-dir", str(folder),
        "--socket", str(sock), "--docker-host", f"unix://{late_socket}", "--gpu-backend", "sim",
        "--tick", "50ms", "--inventory-refresh", "0",
    ]  # fmt: skip
    client = AllocatorClient(str(sock))
    child = ChildProcess("allocator", argv, folder / "allocator.log").start()
    container = None
    try:
        child.wait_until(lambda: client.call("GET", "/healthz")[0] == 200, 30, "answering")
        alloc = client.allocate(user="bob", name="late")
        container = docker_client.containers.run(
            busybox_image,
            ["sleep", "3600"],
            detach=True,
            network_mode="none",
            labels={"ds01.user": "bob", "ds01.allocation": alloc["id"]},
        )
        eventually(
            lambda: (
                _sample(_metrics_text(sock), "ds01_allocator_errors_total", source="docker") >= 2
            ),
            WAIT,
            "the events follower to retry while Docker is down",
        )
        assert client.get(alloc["id"])["state"] == "reserved"

        late_socket.symlink_to(dockerd.socket_path)  # Docker answers now

        eventually(lambda: client.get(alloc["id"])["state"] == "bound", WAIT, "reconciled")
        remove_container(container)
        container = None
        eventually(lambda: client.get(alloc["id"])["state"] == "released", WAIT, "followed")
    finally:
        if container is not None:
            remove_container(container)
        child.stop()


def test_sighup_reloads_the_policy_and_refuses_a_bad_one(short_dir, dockerd):
    folder = short_dir / "reload"
    folder.mkdir()
    policy = write_policy(folder)
    sock = folder / "s.sock"
    argv = [
        str(BIN / "ds01"), "allocator", "--policy", str(policy), "--state-dir", str(folder),
        "--socket", str(sock), "--docker-host", dockerd.url, "--gpu-backend", "sim",
        "--tick", "50ms", "--inventory-refresh", "0",
    ]  # fmt: skip
    client = AllocatorClient(str(sock))
    child = ChildProcess("allocator", argv, folder / "allocator.log").start()
    try:
        child.wait_until(lambda: client.call("GET", "/healthz")[0] == 200, 30, "answering")
        assert child.process is not None

        policy.write_text(policy.read_text() + "gpu_wait: never\n")
        child.process.send_signal(signal.SIGHUP)
        eventually(
            lambda: (
                _sample(_metrics_text(sock), "ds01_policy_reloads_total", result="refused") == 1
            ),
            WAIT,
            "the bad file refused",
        )
        assert "gpu_wait" in (folder / "allocator.log").read_text()
        first = client.allocate(user="bob", count=2)  # student: 2 GPUs under the old policy
        client.release(first["id"])

        groups = {
            "student": {"max_gpus": 1, "max_runtime": "24h"},
            "admin": {"max_gpus": None, "max_runtime": "72h"},
        }
        write_policy(folder, groups=groups)
        child.process.send_signal(signal.SIGHUP)
        eventually(
            lambda: (
                _sample(_metrics_text(sock), "ds01_policy_reloads_total", result="applied") == 1
            ),
            WAIT,
            "the good file applied",
        )
        with pytest.raises(Refused, match="1"):
            client.allocate(user="bob", count=2)
    finally:
        child.stop()


def test_restart_keeps_every_allocation(short_dir, dockerd, docker_client, busybox_image):
    folder = short_dir / "restart"
    folder.mkdir()
    policy = write_policy(folder, gpu_hold_after_stop="1h")
    sock = folder / "s.sock"
    argv = [
        str(BIN / "ds01"), "allocator", "--policy", str(policy), "--state-dir", str(folder),
        "--socket", str(sock), "--docker-host", dockerd.url, "--gpu-backend", "sim",
        "--tick", "50ms", "--inventory-refresh", "0",
    ]  # fmt: skip
    client = AllocatorClient(str(sock))

    def start() -> ChildProcess:
        child = ChildProcess("allocator", argv, folder / "allocator.log").start()
        child.wait_until(lambda: client.call("GET", "/healthz")[0] == 200, 30, "answering")
        return child

    child = start()
    try:
        reserved = client.allocate(user="alice")
        running = client.allocate(user="bob", name="keep")
        container = docker_client.containers.run(
            busybox_image,
            ["sleep", "3600"],
            detach=True,
            network_mode="none",
            labels={"ds01.user": "bob", "ds01.allocation": running["id"]},
        )
        eventually(lambda: client.get(running["id"])["state"] == "bound", WAIT, "bound")
        child.stop()
        container.kill()  # dies while the allocator is down
        child = start()
        assert client.get(reserved["id"])["state"] == "reserved"
        after = client.get(running["id"])
        assert after["state"] == "held" and after["container_id"] == container.id
        assert {d["state"] for d in client.devices() if d["allocation"]} == {"reserved", "held"}
        remove_container(container)
        eventually(lambda: client.get(running["id"])["state"] == "released", WAIT, "freed")
        with pytest.raises(Refused):
            client.get("nope")
    finally:
        child.stop()


def test_root_stopping_someone_elses_container_tells_its_owner_why(
    allocator_factory, docker_client, dockerd, busybox_image, short_dir, capsys
):
    runtime = allocator_factory(docker=docker_client, history_log=short_dir / "history.jsonl")
    box = docker_client.containers.run(
        busybox_image, ["sleep", "600"], name="alices-job", detach=True,
        network_mode="none", labels={"ds01.user": "alice"},
    )  # fmt: skip
    try:
        common = ["--socket", str(runtime.socket_path), "--docker-host", dockerd.url]
        assert container_cli.main([*common, "stop", "alices-job", "--reason", "maintenance"]) == 0
        client = AllocatorClient(str(runtime.socket_path))
        [stop] = [r for r in client.history(user="alice") if r["kind"] == "stop"]
        assert (stop["reason"], stop["container_id"]) == ("admin", box.id)
        assert stop["detail"] == "maintenance (container stop by root)"
        assert client.history() == []  # root's own history holds nothing of it
    finally:
        remove_container(box)
