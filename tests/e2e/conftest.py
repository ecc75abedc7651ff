"""The whole stack, started by the same supervisor as `ds01 up`, with timings in seconds."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ds01.supervisor import Endpoints, StackOptions, StackSupervisor, Timings
from tests.gateway.clients import unprivileged_users, user_workdir
from tests.harness import waiting
from tests.harness.components import require_binary
from tests.harness.containers import remove_container

__all__ = ["unprivileged_users", "user_workdir"]  # fixtures for tests through the gateway

# Two MIG instances only, so a third request has to wait for one to be freed.
TOPOLOGY = """
seed: ds01-e2e
gpus:
  - model: NVIDIA H200
    memory: 141gb
    gpm: true
    mig:
      - {profile: 3g.71gb, gi_id: 1, mig_index: 0}
      - {profile: 3g.71gb, gi_id: 2, mig_index: 1}
"""

POLICY = """
default_group: student
users: {root: admin}
idle_timeout: 15s
idle_warning: 8s
runtime_warning: 1m
gpu_wait: 90s
gpu_hold_after_stop: 2s
container_hold_after_stop: 10m
reservation_ttl: 60s
stop_grace: 2s
unmanaged_gpu: {action: stop, grace: 6s}
gpu: {backend: sim, sim_topology: %s}
"""


@dataclass
class RunningStack:
    endpoints: Endpoints
    supervisor: StackSupervisor
    home: Path
    env: dict[str, str]

    def cli(
        self, *argv: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess:
        """Run one of our console scripts as a user would, against this stack."""
        result = subprocess.run(
            [sys.executable, "-c", CLI_SHIM, *argv],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"{argv} exited {result.returncode}: {result.stderr}")
        return result

    def popen(self, *argv: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-c", CLI_SHIM, *argv],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )


# argv[1] names the console script; the rest are its arguments.
CLI_SHIM = textwrap.dedent(
    """
    import sys
    from ds01 import cli
    tool = sys.argv[1]
    entry = {"container": cli.container_main, "gpu-status": cli.gpu_status_main,
             "ds01-docker": cli.docker_wrapper_main, "ds01": cli.main}[tool]
    sys.exit(entry(sys.argv[2:]))
    """
)


# Seconds, not minutes: a collect every 0.5 s, scrapes and rule evaluations every second.
E2E_TIMINGS = Timings(
    collect_interval=0.5,
    scrape_interval=1.0,
    evaluation_interval=1.0,
    group_wait=0.0,
    group_interval=1.0,
    repeat_interval=5.0,
    exporter_stale_after=15.0,
)


@pytest.fixture
def stack_policy() -> str:
    """The policy template (`%s` = the topology file); a test module may override it."""
    return POLICY


@pytest.fixture
def stack_topology() -> str:
    """The sim GPU topology; a test module may override it."""
    return TOPOLOGY


@pytest.fixture
def stack_policy_extra() -> str:
    """YAML appended to POLICY; a test module overrides this fixture to add its own keys."""
    return ""


@pytest.fixture
def stack(
    dockerd,
    docker_client,
    busybox_image,
    tmp_path: Path,
    stack_policy: str,
    stack_topology: str,
    stack_policy_extra: str,
) -> Iterator[RunningStack]:
    require_binary("prometheus")
    require_binary("prometheus-alertmanager", "alertmanager")
    topology = tmp_path / "topology.yaml"
    topology.write_text(stack_topology)
    policy = tmp_path / "ds01.yaml"
    policy.write_text(stack_policy % topology + stack_policy_extra)
    # A short, world-traversable state folder: unprivileged users open the gateway socket in it.
    state = Path(os.environ.get("DS01_E2E_STATE") or tempfile.mkdtemp(prefix="ds01e-", dir="/tmp"))
    os.chmod(state, 0o755)
    timings = E2E_TIMINGS
    supervisor = StackSupervisor(
        StackOptions(policy, state, timings, docker_host=dockerd.url, log_level="DEBUG")
    )
    before = {c.id for c in docker_client.containers.list(all=True)}
    endpoints = supervisor.start()
    home = tmp_path / "home"
    home.mkdir()
    env = dict(
        os.environ,
        DOCKER_HOST=dockerd.url,
        DS01_ALLOCATOR_SOCKET=endpoints.allocator_socket,
        DS01_PROMETHEUS_URL=endpoints.prometheus,
        DS01_SIM_STATE=endpoints.sim_state,
        DS01_POLICY=str(policy),
        NO_COLOR="1",
    )
    running = RunningStack(endpoints, supervisor, home, env)
    pids = [child.pid for child in supervisor.children]
    yield running
    supervisor.stop()
    # Containers this test made must not outlive it: the next stack would judge them.
    for container in docker_client.containers.list(all=True):
        if container.id not in before:
            remove_container(container)
    if "DS01_E2E_STATE" not in os.environ:
        shutil.rmtree(state, ignore_errors=True)
    for pid in pids:
        assert pid is not None and not _alive(pid), f"process {pid} left running after teardown"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes: it only waits to be reaped.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@pytest.fixture
def eventually() -> Callable[..., object]:
    """The shared poller (tests/harness/waiting.py): (probe, timeout, what) -> first truthy."""
    return waiting.eventually
