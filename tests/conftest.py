"""Session fixtures: a private dockerd with a busybox image, Prometheus and Alertmanager factories.

Everything started here is stopped here. Integration tests skip on a laptop without the
component and fail under CI=true (see tests/harness/components.py).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ds01.gpu import GpuDevice
from ds01.gpu.sim import SimBackend, SimStateFile, load_topology
from ds01.postgres_server import PostgresServer, start_postgres
from ds01.stack import (
    Alertmanager,
    Dockerd,
    Prometheus,
    StackError,
    ensure_busybox_image,
    start_alertmanager,
    start_dockerd,
    start_prometheus,
)
from tests.harness.components import require_binary, require_postgres, require_root
from tests.harness.containers import remove_container
from tests.harness.smtp import smtp_sink

__all__ = ["smtp_sink"]  # a real SMTP server for Alertmanager's email receiver

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def dockerd() -> Iterator[Dockerd]:
    """A private Docker engine on its own socket (short path: unix sockets are length-limited)."""
    require_binary("dockerd")
    require_root("a private dockerd")
    root = Path(tempfile.mkdtemp(prefix="ds01d-", dir="/tmp"))
    try:
        engine = start_dockerd(root)
    except StackError as exc:
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(str(exc), pytrace=False)
    yield engine
    engine.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def docker_client(dockerd: Dockerd):
    import docker

    client = docker.DockerClient(base_url=dockerd.url, timeout=60)
    yield client
    client.close()


@pytest.fixture(scope="session")
def busybox_image(docker_client) -> str:
    require_binary("busybox")
    return ensure_busybox_image(docker_client)


@pytest.fixture
def containers(docker_client, busybox_image) -> Iterator[Callable[..., object]]:
    """Factory: run a busybox container (network none, `sleep` by default); removed at teardown.

    `gpus=["MIG-…"]` adds a real DeviceRequest, as `docker run --gpus device=…` does.
    """
    from docker.types import DeviceRequest

    made = []

    def run(
        *,
        name: str | None = None,
        command: list[str] | None = None,
        gpus: list[str] | None = None,
        labels: dict[str, str] | None = None,
        **kwargs,
    ):
        extra = dict(kwargs)
        if gpus is not None:
            extra["device_requests"] = [DeviceRequest(device_ids=gpus, capabilities=[["gpu"]])]
        container = docker_client.containers.run(
            busybox_image,
            command or ["sleep", "3600"],
            name=name or f"t-{uuid.uuid4().hex[:10]}",
            labels=labels or {},
            network_mode="none",
            detach=True,
            **extra,
        )
        made.append(container)
        container.reload()
        return container

    yield run
    for container in made:
        remove_container(container)  # gone already (the test removed it) is fine


@pytest.fixture
def sim_inventory() -> tuple[GpuDevice, ...]:
    """The default sim topology: H200 in the balanced MIG layout plus one whole H200."""
    return load_topology(None)


@pytest.fixture
def sim_state(tmp_path: Path) -> SimStateFile:
    return SimStateFile(tmp_path / "sim-gpu-state.json")


@pytest.fixture
def sim_backend(sim_state: SimStateFile) -> SimBackend:
    return SimBackend.from_files(None, sim_state.path)


@pytest.fixture
def prometheus_factory(tmp_path: Path) -> Iterator[Callable[..., Prometheus]]:
    """Factory: start_prometheus(config_text, extra_files=…) on a free port; stopped at teardown."""
    require_binary("prometheus")
    started: list[Prometheus] = []

    def start(config_text: str, **kwargs) -> Prometheus:
        server = start_prometheus(tmp_path / f"prometheus-{len(started)}", config_text, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def alertmanager_factory(tmp_path: Path) -> Iterator[Callable[..., Alertmanager]]:
    """Factory: start_alertmanager(config_text, …) on a free port; stopped at teardown."""
    require_binary("prometheus-alertmanager", "alertmanager")
    started: list[Alertmanager] = []

    def start(config_text: str, **kwargs) -> Alertmanager:
        server = start_alertmanager(
            tmp_path / f"alertmanager-{len(started)}", config_text, **kwargs
        )
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def start_private_postgres() -> tuple[PostgresServer, Path]:
    """A throwaway PostgreSQL in a short, world-traversable /tmp folder (fsync off)."""
    require_postgres()
    root = Path(tempfile.mkdtemp(prefix="ds01pg-", dir="/tmp"))
    os.chmod(root, 0o755)  # the postgres account must reach its data folder
    try:
        return start_postgres(root, fsync=False), root
    except StackError as exc:
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One private PostgreSQL for the session; tests take their own database from it."""
    server, root = start_private_postgres()
    yield server
    server.close()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_dsn(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty database for one test (dropped at teardown): its DSN."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    if not postgres_server.running():
        postgres_server.start()  # a test that stopped the shared server left it down
    dsn = postgres_server.create_database(name)
    yield dsn
    if postgres_server.running():
        postgres_server.drop_database(name)


@pytest.fixture
def postgres_factory() -> Iterator[Callable[[], PostgresServer]]:
    """Factory: a PostgreSQL of the test's own (to stop and restart for outages); stopped after."""
    started: list[tuple[PostgresServer, Path]] = []

    def start() -> PostgresServer:
        started.append(start_private_postgres())
        return started[-1][0]

    yield start
    for server, root in started:
        server.close()
        shutil.rmtree(root, ignore_errors=True)
