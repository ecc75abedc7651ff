"""`ds01 up` as a user runs it: a banner with every URL, everything healthy, Ctrl-C stops all."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

from ds01.policy import parse_policy
from ds01.supervisor import Endpoints
from ds01.up import banner, demo_policy

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
    )
    text = banner(ep, Path("/p.yaml"), demo=True)
    for needle in (
        "sim (no NVIDIA driver",
        "http://127.0.0.1:1/metrics",
        "unix:///s.sock",
        "http://127.0.0.1:4",
        "http://127.0.0.1:5",
        "[demo timings]",
    ):
        assert needle in text


def processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_ds01_up_starts_everything_reloads_on_sighup_and_ctrl_c_stops_it(dockerd, tmp_path):
    env = dict(os.environ, DOCKER_HOST=dockerd.url, PYTHONUNBUFFERED="1")
    env.pop("DS01_POLICY", None)
    log = tmp_path / "up.out"
    policy = tmp_path / "ds01.yaml"
    example = (REPO / "config" / "ds01.example.yaml").read_text()
    policy.write_text(example)
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ds01.cli",
                "up",
                "--state-dir",
                str(tmp_path / "state"),
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
        assert requests.get(f"{urls['Alertmanager']}/-/ready", timeout=5).ok

        # SIGHUP: a bad file is refused (and not passed on); a good one reaches every part and
        # the alert rules.
        policy.write_text(example + "\nidle_warning: soon\n")
        proc.send_signal(signal.SIGHUP)
        _wait_for(log, "policy reload refused", proc)
        assert "idle_warning" in log.read_text()
        policy.write_text(example + "\nidle_warning: 7m\n")
        proc.send_signal(signal.SIGHUP)
        _wait_for(log, "policy reloaded", proc)
        rules = "".join(p.read_text() for p in (tmp_path / "state/prometheus/rules").glob("*"))
        assert "time() + 420" in rules
        for part in ("exporter", "allocator", "enforcer"):
            _wait_for(tmp_path / "state" / "logs" / f"{part}.log", "policy reloaded from", proc)

        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
        for url in urls.values():
            with pytest.raises(requests.ConnectionError):
                requests.get(url, timeout=2)
        assert processes_mentioning(str(tmp_path / "state")) == []
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _wait_for(path: Path, text: str, proc: subprocess.Popen, bound: float = 60.0) -> None:
    """Until `text` shows in the log at `path` (a hang bound, not a speed expectation)."""
    deadline = time.monotonic() + bound
    while not (path.exists() and text in path.read_text()):
        assert proc.poll() is None, path.read_text() if path.exists() else ""
        assert time.monotonic() < deadline, f"{text!r} not in {path}"
        time.sleep(0.2)
