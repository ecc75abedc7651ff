"""`ds01 up` as a user runs it: a banner with every URL, everything healthy, Ctrl-C stops all."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests
import yaml

from allocator.client import AllocatorClient
from ds01.policy import parse_policy
from ds01.supervisor import Endpoints, unreachable_folder
from ds01.up import banner, demo_policy
from tests.gateway.clients import run_as, unprivileged_users  # noqa: F401 - a fixture
from tests.harness.components import require_binary
from tests.harness.containers import remove_named
from tests.harness.processes import processes_mentioning, stop_stack, wait_for_log
from tests.harness.waiting import eventually

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]


def test_demo_policy_compresses_time_and_stays_valid():
    data = yaml.safe_load((REPO / "config" / "ds01.example.yaml").read_text())
    policy = parse_policy(demo_policy(data), "demo")
    assert (policy.idle_timeout, policy.idle_warning) == (120, 60)
    assert all(g.max_runtime == 600 and g.idle_timeout is None for g in policy.groups.values())
    assert set(policy.container_types.values()) == {600}


def test_banner_names_backend_and_every_url():
    ep = Endpoints(
        docker_host="unix:///d.sock",
        exporter="http://127.0.0.1:1",
        enforcer="http://127.0.0.1:2",
        allocator_socket="/s.sock",
        allocator_http="http://127.0.0.1:3",
        prometheus="http://127.0.0.1:4",
        alertmanager="http://127.0.0.1:5",
        backend="sim",
        gateway_socket="/g/docker.sock",
    )
    text = banner(ep, Path("/p.yaml"), demo=True)
    for needle in (
        "sim (no NVIDIA driver",
        "http://127.0.0.1:1/metrics",
        "unix:///s.sock",
        "http://127.0.0.1:4",
        "http://127.0.0.1:5",
        "[demo timings]",
        "  gateway       unix:///g/docker.sock   export DOCKER_HOST=unix:///g/docker.sock",
    ):
        assert needle in text
    assert "DOCKER_HOST=unix:///d.sock" not in text, "users are sent to the gateway, not dockerd"


def test_banner_says_why_there_is_no_gateway():
    ep = Endpoints(docker_host="tcp://10.0.0.1:2375", gateway_note="not started: tcp")
    text = banner(ep, Path("/p.yaml"), demo=False)
    assert re.search(r"^  gateway\s+not started: tcp$", text, re.M)
    assert "DOCKER_HOST=tcp://10.0.0.1:2375" in text


def test_unreachable_folder_names_the_first_closed_parent():
    base = Path(tempfile.mkdtemp(prefix="ds01reach-", dir="/tmp"))  # /tmp: open to all
    try:
        os.chmod(base, 0o755)
        closed = base / "closed"
        (closed / "open").mkdir(parents=True)
        os.chmod(closed, 0o700)
        assert unreachable_folder(closed / "open" / "docker.sock") == closed
        os.chmod(closed, 0o711)  # traversable without being listable is enough
        assert unreachable_folder(closed / "open" / "docker.sock") is None
    finally:
        shutil.rmtree(base, ignore_errors=True)


def gpu_run_through(docker_host: str, name: str, image: str, user: object = None):
    """`docker run --gpus 1` with the DOCKER_HOST the banner printed (as root, or as `user`)."""
    argv = ["docker", "run", "--name", name, "--gpus", "1", "--network", "none", image, "true"]
    if user is None:
        env = dict(os.environ, DOCKER_HOST=docker_host)
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    return run_as(user, argv, env={"DOCKER_HOST": docker_host}, timeout=120)


def test_ds01_up_starts_everything_reloads_on_sighup_and_ctrl_c_stops_it(
    dockerd,
    docker_client,
    busybox_image,
    unprivileged_users,  # noqa: F811
    tmp_path,
):
    require_binary("docker")
    env = dict(os.environ, DOCKER_HOST=dockerd.url, PYTHONUNBUFFERED="1")
    env.pop("DS01_POLICY", None)
    log = tmp_path / "up.out"
    # a state folder other users can traverse, as /var/lib/ds01/up is (tmp_path is not)
    state = Path(tempfile.mkdtemp(prefix="ds01up-", dir="/tmp"))
    os.chmod(state, 0o755)
    policy = state / "ds01.yaml"
    example = (REPO / "config" / "ds01.example.yaml").read_text()
    policy.write_text(example)
    alice = unprivileged_users[0]
    names = ("ds01-up-root", "ds01-up-alice")
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ds01.cli",
                "up",
                "--state-dir",
                str(state / "state"),
                "--policy",
                str(policy),
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 90
        while "Ctrl-C stops everything" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        text = log.read_text()
        assert "GPU backend   sim" in text
        urls = dict(re.findall(r"^  (exporter|Prometheus|Alertmanager)\s+(http://\S+)", text, re.M))
        assert requests.get(urls["exporter"], timeout=5).status_code == 200
        assert requests.get(urls["Prometheus"].replace("/alerts", "/-/ready"), timeout=5).ok
        admin = ("admin", (state / "state" / "alertmanager" / "admin.password").read_text().strip())
        assert requests.get(f"{urls['Alertmanager']}/-/ready", timeout=5).status_code == 401
        assert requests.get(f"{urls['Alertmanager']}/-/ready", timeout=5, auth=admin).ok

        gateway = re.search(r"^  gateway\s+(unix://\S+)\s+export DOCKER_HOST=(\S+)$", text, re.M)
        assert gateway, text
        assert gateway[1] == gateway[2] != dockerd.url
        allocator_socket = re.search(r"^  allocator\s+unix://(\S+)", text, re.M)[1]
        for name, user in zip(names, (None, alice), strict=True):
            done = gpu_run_through(gateway[2], name, busybox_image, user)
            assert done.returncode == 0, done.stderr
            labels = docker_client.containers.get(name).labels
            owner = user.name if user else "root"
            assert labels["ds01.user"] == owner and labels["ds01.managed"] == "true"
            status, answer = AllocatorClient(allocator_socket).call(
                "GET", f"/v1/allocations/{labels['ds01.allocation']}"
            )
            assert status == 200 and answer["allocation"]["user"] == owner, answer
            assert answer["allocation"]["devices"] == labels["ds01.gpu.devices"].split(",")

        # A part that dies is restarted; nothing else stops (before: ds01 up ended, dockerd too).
        [prometheus_pid] = processes_mentioning(str(state / "state" / "prometheus" / "data"))
        os.kill(prometheus_pid, signal.SIGKILL)
        ready = urls["Prometheus"].replace("/alerts", "/-/ready")

        def restarted() -> bool:
            pids = processes_mentioning(str(state / "state" / "prometheus" / "data"))
            try:
                answers = requests.get(ready, timeout=2).ok
            except requests.ConnectionError:
                return False
            return answers and bool(pids) and prometheus_pid not in pids

        eventually(restarted, 60, "Prometheus restarted by ds01 up")
        assert proc.poll() is None
        assert "prometheus exited (code -9)" in log.read_text()
        assert requests.get(urls["exporter"], timeout=5).status_code == 200  # others untouched
        # SIGHUP: a bad file is refused (and not passed on); a good one reaches every part and
        # the alert rules.
        policy.write_text(example + "\nidle_warning: soon\n")
        proc.send_signal(signal.SIGHUP)
        wait_for_log(log, "policy reload refused", proc)
        assert "idle_warning" in log.read_text()
        policy.write_text(example + "\nidle_warning: 7m\n")
        proc.send_signal(signal.SIGHUP)
        wait_for_log(log, "policy reloaded", proc)
        rules = "".join(p.read_text() for p in (state / "state/prometheus/rules").glob("*"))
        assert "time() + 420" in rules
        for part in ("exporter", "allocator", "gateway", "enforcer"):
            wait_for_log(state / "state" / "logs" / f"{part}.log", "policy reloaded from", proc)

        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
        for url in urls.values():
            with pytest.raises(requests.ConnectionError):
                requests.get(url, timeout=2)
        assert processes_mentioning(str(state / "state")) == []
    finally:
        stop_stack(proc, state / "state")
        for name in names:
            try:
                remove_named(docker_client, name)
            except Exception:  # noqa: BLE001 - never created
                continue
        shutil.rmtree(state, ignore_errors=True)
