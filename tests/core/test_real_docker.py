"""Classification and PID attribution against the private dockerd, through the real docker CLI."""

from __future__ import annotations

import os
import subprocess

import pytest

from ds01.cgroups import container_id_of_pid
from ds01.containers import classify
from ds01.gpu import device_is_busy
from tests.harness.components import require_binary

pytestmark = pytest.mark.integration


@pytest.fixture
def docker_cli(dockerd, busybox_image):
    binary = require_binary("docker")
    made: list[str] = []

    def run(*args: str) -> str:
        env = dict(os.environ, DOCKER_HOST=dockerd.url)
        cmd = [binary, "run", "-d", "--network", "none", *args, busybox_image, "sleep", "600"]
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stderr
        made.append(result.stdout.strip())
        return made[-1]

    yield run
    env = dict(os.environ, DOCKER_HOST=dockerd.url)
    if made:
        subprocess.run([binary, "rm", "-f", *made], env=env, capture_output=True, check=False)


def test_gpus_device_mig_is_found(docker_cli, docker_client, sim_inventory, tmp_path):
    mig = sim_inventory[2]
    home = tmp_path / "home" / "alice"
    home.mkdir(parents=True)
    cid = docker_cli("--gpus", f"device={mig.device_uuid}", "-v", "/home/alice:/home/alice")
    facts = classify(docker_client.api.inspect_container(cid), sim_inventory)
    assert facts.gpu_devices == (mig.device_uuid,)
    assert (facts.type, facts.user, facts.managed) == ("docker", "alice", False)
    assert facts.running


def test_compose_devcontainer_and_plain_containers(docker_cli, docker_client, sim_inventory):
    compose = docker_cli(
        "--gpus",
        "device=1",
        "--label",
        "com.docker.compose.project=exp",
        "--label",
        "com.docker.compose.project.working_dir=/home/bob/exp",
    )
    devcontainer = docker_cli(
        "--runtime",
        "nvidia",
        "-e",
        "NVIDIA_VISIBLE_DEVICES=0:0",
        "--label",
        "devcontainer.local_folder=/home/carol/thesis",
    )
    plain = docker_cli()
    cuda_image_under_runc = docker_cli("-e", "NVIDIA_VISIBLE_DEVICES=all")
    default_runtime = docker_client.info()["DefaultRuntime"]
    facts = {
        cid: classify(
            docker_client.api.inspect_container(cid), sim_inventory, default_runtime=default_runtime
        )
        for cid in (compose, devcontainer, plain, cuda_image_under_runc)
    }
    assert default_runtime == "runc"
    assert facts[cuda_image_under_runc].has_gpu is False
    assert (facts[compose].type, facts[compose].user) == ("compose", "bob")
    assert facts[compose].gpu_devices == (sim_inventory[4].device_uuid,)
    assert (facts[devcontainer].type, facts[devcontainer].user) == ("devcontainer", "carol")
    assert facts[devcontainer].gpu_devices == (sim_inventory[0].device_uuid,)
    assert facts[plain].has_gpu is False


def test_container_pid_on_sim_device_maps_back(containers, sim_backend, sim_state, sim_inventory):
    mig = sim_inventory[3]
    container = containers(gpus=[mig.device_uuid])
    pid = container.attrs["State"]["Pid"]
    sim_state.set_device(mig.device_uuid, activity=0.9, pids=[pid])
    sample = sim_backend.read().samples[mig.device_uuid]
    assert device_is_busy(sample, busy_threshold=0.05)
    assert [container_id_of_pid(p) for p in sample.process_pids] == [container.id]
    assert container_id_of_pid(os.getpid()) is None
