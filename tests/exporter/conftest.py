"""Exporter fixtures: recorded inspect data, a test policy, and the exporter as a real process."""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from ds01.stack import ChildProcess, StackError, free_port
from tests.exporter.helpers import Sample, UnixProxy, scrape

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parents[2]

IDLE_TIMEOUT = 600.0  # the test policy's idle timeout for user alice (group researcher)
TEST_POLICY = """
idle_timeout: 10m
users: {alice: researcher}
groups:
  student: {max_gpus: 2, max_runtime: 24h}
  researcher: {max_gpus: 4, max_runtime: 48h}
keep_alive: {path: /workspace/.keep-alive, max_age: 1h}
"""


@pytest.fixture
def inspects() -> dict[str, dict[str, Any]]:
    """Recorded `docker inspect` answers, by fixture name (gpu-managed, cpu-only, …)."""
    return {
        path.stem.removeprefix("inspect-"): json.loads(path.read_text())
        for path in FIXTURES.glob("inspect-*.json")
    }


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "ds01.yaml"
    path.write_text(TEST_POLICY)
    return path


@dataclass
class RunningExporter:
    child: ChildProcess
    url: str

    def scrape(self) -> list[Sample]:
        return scrape(self.url)

    def state(self) -> dict[str, Any]:
        return requests.get(f"{self.url}/api/state", timeout=10).json()

    def stop(self) -> None:
        self.child.stop()


@pytest.fixture
def exporter_factory(
    tmp_path: Path, policy_file: Path, sim_state, dockerd
) -> Iterator[Callable[..., RunningExporter]]:
    """Start `python -m exporter` (sim backend, 0.5 s cycles) on a free port; stopped after."""
    started: list[RunningExporter] = []

    def start(
        *,
        docker_host: str | None = None,
        state_dir: Path | None = None,
        extra: tuple[str, ...] = (),
    ) -> RunningExporter:
        port = free_port()
        argv = [
            sys.executable,
            "-m",
            "exporter",
            f"--policy={policy_file}",
            f"--state-dir={state_dir or tmp_path / 'state'}",
            f"--listen=127.0.0.1:{port}",
            f"--docker-host={docker_host or dockerd.url}",
            "--gpu-backend=sim",
            f"--sim-state={sim_state.path}",
            "--collect-interval=0.5s",
            "--keepalive-interval=1s",
            "--log-level=DEBUG",
            *extra,
        ]
        log = tmp_path / f"exporter-{uuid.uuid4().hex[:6]}.log"
        child = ChildProcess("exporter", argv, log, cwd=REPO).start()
        running = RunningExporter(child, f"http://127.0.0.1:{port}")
        started.append(running)
        try:
            child.wait_until(
                lambda: requests.get(f"{running.url}/healthz", timeout=1).status_code == 200,
                60,
                "answering /healthz",
            )
        except StackError as exc:
            pytest.fail(str(exc), pytrace=False)
        return running

    yield start
    for running in started:
        running.stop()


@pytest.fixture
def docker_proxy(dockerd, tmp_path: Path) -> Iterator[UnixProxy]:
    """A Unix-socket proxy in front of the private dockerd that a test can cut and restore."""
    proxy = UnixProxy(Path("/tmp") / f"ds01p-{uuid.uuid4().hex[:8]}.sock", dockerd.socket_path)
    proxy.restore()
    yield proxy
    proxy.cut()
