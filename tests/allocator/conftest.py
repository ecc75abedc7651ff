"""Allocator fixtures: a tmp policy file, a bigger sim topology, and real allocator servers."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from allocator.client import AllocatorClient
from allocator.runtime import AllocatorRuntime, build_runtime, start_runtime
from allocator.service import Settings
from ds01.gpu.sim import SimBackend
from ds01.policy import load_policy

FAST = {
    "gpu_wait": "2s",
    "gpu_hold_after_stop": "2s",
    "reservation_ttl": "60s",
    "users": {"alice": "student", "bob": "student", "carol": "student", "root": "admin"},
}


def write_policy(folder: Path, **overrides: Any) -> Path:
    data = {**FAST, **overrides}
    path = folder / "ds01.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def write_topology(folder: Path, gpus: int, mig_per_gpu: int = 4) -> Path:
    """`gpus` H200s, each split into `mig_per_gpu` 1g.18gb instances."""
    entries = [
        {
            "model": "NVIDIA H200",
            "memory": "141gb",
            "mig": [
                {"profile": "1g.18gb", "gi_id": 9 + i, "mig_index": i} for i in range(mig_per_gpu)
            ],
        }
        for _ in range(gpus)
    ]
    path = folder / "topology.yaml"
    path.write_text(yaml.safe_dump({"seed": "alloc-test", "gpus": entries}))
    return path


WAIT = 10.0  # an upper bound for waits (a hang), never an expectation of speed


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short folder (unix socket paths are limited to ~100 characters), world-traversable."""
    folder = Path(tempfile.mkdtemp(prefix="ds01a-", dir="/tmp"))
    os.chmod(folder, 0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def allocator_factory(short_dir: Path, sim_state) -> Iterator[Callable[..., AllocatorRuntime]]:
    """Factory: an allocator served by waitress in a thread on a tmp socket; stopped at teardown.

    `policy={...}` overrides keys of the fast test policy; `topology=Path`; `docker=client`.
    Calling it again with the same `name` reuses the same SQLite file (a restart).
    """
    started: list[AllocatorRuntime] = []

    def start(
        *,
        policy: dict[str, Any] | None = None,
        topology: Path | None = None,
        docker: Any = None,
        name: str = "a",
        **kwargs: Any,
    ) -> AllocatorRuntime:
        folder = short_dir / name
        folder.mkdir(exist_ok=True)
        os.chmod(folder, 0o755)
        loaded = load_policy(write_policy(folder, **(policy or {})))
        runtime = build_runtime(
            loaded,
            db_path=folder / "allocator.sqlite",
            socket_path=folder / "s.sock",
            backend=SimBackend.from_files(topology, sim_state.path),
            docker_client=docker,
            settings=Settings(ticket_grace=kwargs.pop("ticket_grace", 10.0), inventory_refresh=0),
            tick=0.05,
            **kwargs,
        )
        started.append(start_runtime(runtime))
        return runtime

    yield start
    for runtime in started:
        runtime.stop()


@pytest.fixture
def allocator(allocator_factory) -> AllocatorRuntime:
    return allocator_factory()


@pytest.fixture
def client(allocator: AllocatorRuntime) -> AllocatorClient:
    return AllocatorClient(str(allocator.socket_path))


def as_user(client: AllocatorClient, user: str) -> AllocatorClient:
    """Root acting for `user` (the body field only root may use)."""

    class ActingClient(AllocatorClient):
        def call(self, method, path, body=None):
            if method == "POST":
                body = {**(body or {}), "user": user}
            sep = "&" if "?" in path else "?"
            return super().call(method, f"{path}{sep}user={user}", body)

    return ActingClient(client.socket_path)


def sim_backend_for(topology: Path | None, state: Path) -> SimBackend:
    return SimBackend.from_files(topology, state)
