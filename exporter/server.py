"""HTTP endpoints: /metrics (Prometheus text), /api/state (JSON), /healthz; served by waitress."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import waitress
from flask import Flask, Response, jsonify, request
from waitress import wasyncore

from .exposition import Body

logger = logging.getLogger(__name__)


def make_app(
    metrics_body: Callable[[str | None, str | None], Body],
    state: Callable[[], dict[str, Any]],
    health: Callable[[], tuple[bool, dict[str, Any]]],
) -> Flask:
    """The Flask app; every handler reads published data only (no Docker, no GPU calls).

    `metrics_body(accept, accept_encoding)` returns the /metrics body (see exposition.py).
    """
    app = Flask("ds01-exporter")

    @app.get("/metrics")
    def metrics() -> Response:
        body = metrics_body(request.headers.get("Accept"), request.headers.get("Accept-Encoding"))
        response = Response(body.parts, content_type=body.content_type)
        response.headers["Content-Length"] = str(body.length)
        if body.gzipped:
            response.headers["Content-Encoding"] = "gzip"
        response.headers["Vary"] = "Accept, Accept-Encoding"
        return response

    @app.get("/api/state")
    def api_state() -> Response:
        return jsonify(state())

    @app.get("/healthz")
    def healthz() -> tuple[Response, int]:
        ok, details = health()
        return jsonify({"status": "ok" if ok else "failing", **details}), 200 if ok else 503

    @app.get("/")
    def index() -> Response:
        return Response("ds01 exporter: /metrics /api/state /healthz\n", content_type="text/plain")

    return app


class HttpServer:
    """A waitress server on host:port (port 0 picks a free one); `close()` stops it."""

    def __init__(self, app: Flask, host: str, port: int, *, threads: int = 4) -> None:
        self._server = waitress.create_server(app, host=host, port=port, threads=threads)
        self._thread: threading.Thread | None = None
        self._closing = False

    @property
    def port(self) -> int:
        return int(self._server.effective_port)

    @property
    def host(self) -> str:
        return str(self._server.effective_host)

    def serve_forever(self) -> None:
        try:
            self._server.run()
        except (OSError, ValueError):
            if not self._closing:
                raise
            logger.debug("HTTP loop ended while closing", exc_info=True)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve_forever, name="http", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Close the listening socket and every open connection, then end the loop."""
        self._closing = True
        self._server.task_dispatcher.shutdown(cancel_pending=True, timeout=1)
        if self._thread is not None and self._thread.is_alive():
            # Close from inside the loop thread, which then sees an empty map and returns.
            self._server.trigger.pull_trigger(lambda: wasyncore.close_all(self._server._map))
            self._thread.join(5)
        else:
            wasyncore.close_all(self._server._map)
