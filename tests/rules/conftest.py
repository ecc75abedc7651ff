"""Fixtures for the rule and routing tests: the repo's files, the tools, and two tiny HTTP servers.

`exposition` serves a Prometheus text exposition the test controls (it stands in for the
exporter); `recorder` records every webhook Alertmanager posts (it stands in for the enforcer).
Both are real HTTP servers on free ports, stopped at teardown.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.harness.components import require_binary

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO / "prometheus"
ALERTMANAGER_DIR = REPO / "alertmanager"


@pytest.fixture(scope="session")
def promtool() -> str:
    return require_binary("promtool")


@pytest.fixture(scope="session")
def amtool() -> str:
    return require_binary("amtool")


class _QuietHandler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return  # keep pytest output clean; tests assert on what was recorded


def _serve(handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@dataclass
class Exposition:
    """A /metrics endpoint whose body is produced by `body()` at each scrape."""

    server: ThreadingHTTPServer
    body: Callable[[], str] = lambda: ""

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def exposition() -> Iterator[Exposition]:
    holder: dict[str, Exposition] = {}

    class Handler(_QuietHandler):
        def do_GET(self) -> None:
            data = holder["e"].body().encode() if self.path == "/metrics" else b""
            self.send_response(200 if self.path == "/metrics" else 404)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    served = Exposition(_serve(Handler))
    holder["e"] = served
    yield served
    served.server.shutdown()
    served.server.server_close()


@dataclass
class Delivery:
    path: str
    authorization: str | None
    payload: dict[str, Any]


@dataclass
class Recorder:
    """Every POST as (path, Authorization header, JSON body), in arrival order."""

    server: ThreadingHTTPServer
    deliveries: list[Delivery] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def posts(self, path: str) -> list[Delivery]:
        with self.lock:
            return [d for d in self.deliveries if d.path == path]


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    holder: dict[str, Recorder] = {}

    class Handler(_QuietHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            rec = holder["r"]
            with rec.lock:
                rec.deliveries.append(
                    Delivery(self.path, self.headers.get("Authorization"), json.loads(body))
                )
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

    rec = Recorder(_serve(Handler))
    holder["r"] = rec
    yield rec
    rec.server.shutdown()
    rec.server.server_close()
