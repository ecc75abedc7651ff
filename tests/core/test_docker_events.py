"""The one events loop (ds01/docker_events.py) against the private dockerd: Docker down at
start, a catch-up once it answers, events applied, and a failure in the loop survived."""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from ds01.docker_events import EventFollower
from ds01.dockerio import DockerLink, connect
from tests.harness.waiting import eventually

pytestmark = pytest.mark.integration
WAIT = 20.0  # an upper bound for a hang, never an expectation of speed


@pytest.fixture
def late_socket() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="ds01v-", dir="/tmp"))
    yield folder / "docker.sock"
    shutil.rmtree(folder, ignore_errors=True)


def test_follower_retries_while_docker_is_down_then_catches_up_and_survives_a_failure(
    dockerd, containers, late_socket
):
    link = DockerLink(lambda: connect(f"unix://{late_socket}", timeout=10))
    failures: list[object] = []
    catch_ups: list[int] = []
    seen: list[str] = []
    broken = threading.Event()

    def apply(event) -> None:
        if broken.is_set():
            broken.clear()
            raise RuntimeError("applying an event failed")
        seen.append(str((event.get("Actor") or {}).get("ID", "")))

    follower = EventFollower(
        name="test",
        subscribe=lambda: link().api.events(filters={"type": ["container"]}, decode=True),
        catch_up=lambda: catch_ups.append(len(link().api.containers(all=True))),
        apply=apply,
        retry=0.1,
        on_failure=failures.append,
    )
    follower.start()
    try:
        eventually(lambda: len(failures) >= 2, WAIT, "retries while Docker is down")
        assert not follower.connected and catch_ups == []

        late_socket.symlink_to(dockerd.socket_path)
        assert follower.wait_connected(WAIT)
        assert len(catch_ups) == 1
        box = containers()
        eventually(lambda: box.id in seen, WAIT, "the start event of a new container")

        failed_before = len(failures)
        broken.set()
        containers()  # its events hit the failing apply: the loop starts over and catches up
        eventually(lambda: len(catch_ups) >= 2 and follower.connected, WAIT, "a new catch-up")
        assert len(failures) == failed_before + 1
        assert "applying an event failed" in str(failures[-1])
    finally:
        follower.stop()
    assert not follower.connected
