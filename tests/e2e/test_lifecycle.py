"""From allocation to enforced stop, through public interfaces only.

Docker, the Prometheus and Alertmanager HTTP APIs, the enforcer's audit log, the allocator's
API (through the `container` CLI) and `gpu-status --json`.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import docker
import pytest
import requests

from tests.harness.containers import remove_container

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


def audit_records(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def stops(path: str) -> list[dict]:
    return [r for r in audit_records(path) if r.get("decision") == "stopped"]


def firing(prometheus: str, alertname: str, container: str) -> bool:
    alerts = requests.get(f"{prometheus}/api/v1/alerts", timeout=5).json()["data"]["alerts"]
    return any(
        a["labels"].get("alertname") == alertname
        and a["labels"].get("container") == container
        and a["state"] == "firing"
        for a in alerts
    )


def deploy(stack, name: str, *extra: str):
    return (
        "container",
        "deploy",
        name,
        "--image",
        "ds01/busybox:latest",
        "--network",
        "none",
        "--home",
        str(stack.home),
        "--command",
        "sleep 3600",
        *extra,
    )


def test_idle_container_is_warned_stopped_and_its_device_goes_to_the_waiter(
    stack, docker_client, eventually
):
    stack.cli(*deploy(stack, "e2e-busy"))
    stack.cli(*deploy(stack, "e2e-idle"))
    busy = docker_client.containers.get("e2e-busy")
    idle = docker_client.containers.get("e2e-idle")
    busy_device = busy.labels["ds01.gpu.devices"]
    idle_device = idle.labels["ds01.gpu.devices"]
    assert busy_device != idle_device
    stack.cli(
        "ds01",
        "sim-gpu",
        "--state-file",
        stack.endpoints.sim_state,
        "set",
        busy_device,
        "--busy",
        "--pid",
        str(busy.attrs["State"]["Pid"]),
    )

    # Both devices are held: a third request has to wait in the queue.
    waiter = stack.popen(*deploy(stack, "e2e-third"))
    try:
        # The warning reaches the container as a notice file the user can read.
        def notice() -> str:
            result = idle.exec_run(["cat", "/workspace/.ds01-alerts"])
            return result.output.decode() if result.exit_code == 0 else ""

        text = eventually(notice, 30, "idle warning notice file in e2e-idle")
        assert "idle" in text.lower()

        def stopped() -> bool:
            idle.reload()
            return idle.status == "exited"

        eventually(stopped, 40, "e2e-idle stopped by the enforcer")
        third_out, third_err = waiter.communicate(timeout=60)
        assert waiter.returncode == 0, third_err
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.communicate()

    third = docker_client.containers.get("e2e-third")
    assert third.labels["ds01.gpu.devices"] == idle_device
    busy.reload()
    assert busy.status == "running"

    # The audit record is written once the stop has returned: wait for it, then count.
    eventually(lambda: stops(stack.endpoints.audit_log), 20, "the stop in the audit log")
    records = stops(stack.endpoints.audit_log)
    assert [r["container"] for r in records] == ["e2e-idle"]
    assert records[0]["reason"] == "idle"
    assert not firing(stack.endpoints.prometheus, "GPUContainerIdle", "e2e-busy")

    # Alertmanager saw the idle stop alert for that container, and no other stop.
    alerts = requests.get(
        f"{stack.endpoints.alertmanager}/api/v2/alerts",
        timeout=5,
        auth=stack.supervisor.alertmanager_auth,
    ).json()
    stop_alerts = {a["labels"]["container"] for a in alerts if a["labels"].get("action") == "stop"}
    assert stop_alerts <= {"e2e-idle"}

    # gpu-status tells the same story: the freed device now belongs to e2e-third.
    def holders() -> dict[str, str]:
        result = stack.cli("gpu-status", "--json", check=False)
        if result.returncode != 0:
            return {}
        rows = json.loads(result.stdout)["devices"]
        return {r["device_uuid"]: ",".join(c["container"] for c in r["containers"]) for r in rows}

    eventually(
        lambda: (
            holders().get(idle_device) == "e2e-third" and holders().get(busy_device) == "e2e-busy"
        ),
        20,
        "gpu-status shows e2e-third on the freed device",
    )


def test_gpu_container_bypassing_the_wrapper_is_stopped_as_unmanaged(
    stack, dockerd, busybox_image, eventually, tmp_path
):
    inventory = json.loads(
        stack.cli("ds01", "sim-gpu", "--state-file", stack.endpoints.sim_state, "show").stdout
    )
    device = inventory[0]["uuid"]
    env = dict(os.environ, DOCKER_HOST=dockerd.url)
    run = subprocess.run(
        [
            "docker",
            "run",
            "-d",
            "--name",
            "e2e-rogue",
            "--network",
            "none",
            "--gpus",
            f"device={device}",
            busybox_image,
            "sleep",
            "3600",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    client = docker.DockerClient(base_url=dockerd.url)
    try:
        rogue = client.containers.get("e2e-rogue")
        eventually(
            lambda: firing(stack.endpoints.prometheus, "GPUContainerUnmanaged", "e2e-rogue"),
            30,
            "GPUContainerUnmanaged firing for e2e-rogue",
        )

        def stopped() -> bool:
            rogue.reload()
            return rogue.status == "exited"

        eventually(stopped, 30, "e2e-rogue stopped by the enforcer")
        records = eventually(
            lambda: stops(stack.endpoints.audit_log), 20, "the stop in the audit log"
        )
        assert [(r["container"], r["reason"]) for r in records] == [("e2e-rogue", "unmanaged")]
    finally:
        remove_container(client.containers.get("e2e-rogue"))
        client.close()
