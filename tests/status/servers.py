"""Tiny real HTTP servers for the gpu-status tests (no mocks: real sockets, real HTTP).

- `FixedPrometheus` answers `/api/v1/query` with fixed, recorded-style results per query,
  so the terminal rendering can be compared with golden files.
- `MetricsText` serves a Prometheus text exposition at `/metrics`: the integration tests use
  it to stand in for the allocator and the enforcer (realistic series of DESIGN.md) while
  those services are not part of the test.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

Handler = Callable[[str, Mapping[str, list[str]]], tuple[int, str, bytes]]


def _make_handler(answer: Handler) -> type[BaseHTTPRequestHandler]:
    class _Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            status, content_type, body = answer(parts.path, parse_qs(parts.query))
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return None

    return _Handler


@contextmanager
def serve(answer: Handler) -> Iterator[str]:
    """Serve `answer` on a free loopback port; yields the base URL; stops on exit."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(answer))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


class FixedPrometheus:
    """Answers instant queries from a mapping {query: result list}; unknown query -> 400."""

    def __init__(self, results: Mapping[str, list[dict[str, Any]]]) -> None:
        self.results = dict(results)
        self.queries: list[dict[str, str]] = []

    def __call__(self, path: str, params: Mapping[str, list[str]]) -> tuple[int, str, bytes]:
        flat = {k: v[0] for k, v in params.items()}
        self.queries.append(flat)
        if path != "/api/v1/query":
            return 404, "text/plain", b"404 page not found\n"
        query = flat.get("query", "")
        if query not in self.results:
            body = {"status": "error", "errorType": "bad_data", "error": f"unexpected {query}"}
            return 400, "application/json", json.dumps(body).encode()
        data = {"resultType": "vector", "result": self.results[query]}
        return 200, "application/json", json.dumps({"status": "success", "data": data}).encode()


class MetricsText:
    """Serves a text exposition at /metrics (replaceable while running)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __call__(self, path: str, params: Mapping[str, list[str]]) -> tuple[int, str, bytes]:
        if path != "/metrics":
            return 404, "text/plain", b"not found\n"
        return 200, "text/plain; version=0.0.4", self.text.encode()
