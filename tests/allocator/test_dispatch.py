"""The decision lane: one runner for grants and releases, threads for everything else, and a
long poll that steps out of the lane so the release it waits for is not stuck behind it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask, jsonify, request

from allocator.client import AllocatorClient, AllocatorUnavailable
from allocator.dispatch import LEAVE_LANE_KEY, in_decision_lane
from allocator.server import AllocatorServer

from .conftest import WAIT, as_user


@pytest.mark.parametrize(
    ("method", "path", "lane"),
    [
        ("POST", "/v1/allocations", True),
        ("DELETE", "/v1/allocations/0123abcd", True),
        ("DELETE", "/v1/tickets/t-0123", True),
        ("GET", "/v1/allocations", False),
        ("GET", "/v1/tickets/t-0123", False),  # a long poll: never in the lane
        ("POST", "/v1/extensions", False),
        ("GET", "/v1/history", False),
        ("GET", "/metrics", False),
        ("GET", "/healthz", False),
        ("POST", "/v1/allocations/extra", False),
    ],
)
def test_only_grants_releases_and_cancels_queue_in_the_lane(method, path, lane):
    assert in_decision_lane(method, path) is lane


class Probe:
    """Counts how many requests of a kind run at the same moment."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.now = 0
        self.most = 0
        self.threads: set[int] = set()

    def __enter__(self) -> Probe:
        with self._lock:
            self.threads.add(threading.get_ident())
            self.now += 1
            self.most = max(self.most, self.now)
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self.now -= 1


@pytest.fixture
def lane_server(short_dir: Path) -> Iterator[tuple[AllocatorServer, dict]]:
    """AllocatorServer (its real lane) with routes that hold a request for a while."""
    app = Flask("lane-test")
    probes = {"lane": Probe(), "free": Probe()}
    release = threading.Event()

    @app.post("/v1/allocations")
    def decide():
        if request.args.get("block"):
            request.environ[LEAVE_LANE_KEY]()
            release.wait(WAIT)
            return jsonify({"left": True})
        with probes["lane"]:
            time.sleep(0.05)
        return jsonify({"ok": True})

    @app.get("/v1/tickets/<ticket>")
    def long_poll(ticket: str):
        with probes["free"]:
            time.sleep(0.05)
        return jsonify({"ticket": ticket})

    server = AllocatorServer(app, short_dir / "lane.sock", threads=8).start_in_thread()
    yield server, {"probes": probes, "release": release}
    release.set()
    server.close()


def _at_once(calls: list) -> list:
    results: list = [None] * len(calls)

    def run(i: int) -> None:
        results[i] = calls[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    return results


def test_decisions_run_one_at_a_time_and_other_requests_side_by_side(lane_server):
    server, parts = lane_server
    clients = [AllocatorClient(str(server.socket_path)) for _ in range(4)]
    decided = _at_once([lambda c=c: c.call("POST", "/v1/allocations", {}) for c in clients])
    polled = _at_once([lambda c=c: c.call("GET", "/v1/tickets/t-1") for c in clients])
    assert [status for status, _ in decided + polled] == [200] * 8
    assert parts["probes"]["lane"].most == 1
    assert len(parts["probes"]["lane"].threads) == 1  # one warm runner, not a new thread each
    assert parts["probes"]["free"].most > 1  # four 50 ms polls overlapped


def test_a_request_that_leaves_the_lane_does_not_hold_up_the_next_decision(lane_server):
    server, parts = lane_server
    blocked = AllocatorClient(str(server.socket_path))
    waiting = threading.Thread(target=blocked.call, args=("POST", "/v1/allocations?block=1", {}))
    waiting.start()
    try:
        time.sleep(0.1)  # it is inside its wait now
        answered = AllocatorClient(str(server.socket_path)).call("POST", "/v1/allocations", {})
        assert answered[0] == 200
        assert waiting.is_alive()  # the first one still waits, outside the lane
    finally:
        parts["release"].set()
        waiting.join(WAIT)


def test_closing_with_decisions_queued_returns(lane_server):
    server, _ = lane_server

    def ask() -> None:
        try:
            AllocatorClient(str(server.socket_path)).call("POST", "/v1/allocations", {})
        except AllocatorUnavailable:
            pass  # cut off by the close: what this test does

    for _ in range(3):
        threading.Thread(target=ask, daemon=True).start()
    time.sleep(0.02)
    began = time.monotonic()
    server.close()
    assert time.monotonic() - began < WAIT


def test_a_long_polling_grant_request_is_answered_by_the_release_it_waits_for(
    allocator_factory,
):
    """The real allocator: a queued POST long-polls (out of the lane); the release that frees
    its device goes through the lane meanwhile and the POST returns the grant, not a ticket."""
    runtime = allocator_factory(policy={"gpu_wait": "30s"})
    client = AllocatorClient(str(runtime.socket_path))
    held = as_user(client, "alice").allocate(profile="3g.71gb")  # the only 3g.71gb
    answer: dict = {}

    def ask() -> None:
        body = {"profile": "3g.71gb", "wait": WAIT, "user": "bob"}
        answer["status"], answer["body"] = client.call("POST", "/v1/allocations", body)

    asking = threading.Thread(target=ask)
    asking.start()
    deadline = time.monotonic() + WAIT
    while not client.call("GET", "/healthz")[1].get("queue_length"):
        assert time.monotonic() < deadline, "bob never queued"
        time.sleep(0.01)
    status, _ = client.call("DELETE", f"/v1/allocations/{held['id']}?user=alice")
    asking.join(WAIT)
    assert status == 200
    assert answer["status"] == 201
    assert answer["body"]["allocation"]["user"] == "bob"
