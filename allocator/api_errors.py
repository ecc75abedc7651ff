"""Every answer of the allocator API is JSON, errors included: the wrapper and the `container`
CLI print `message`, never an HTML page (a full disk, a bug, a 405, an oversized body)."""

from __future__ import annotations

import logging
import sqlite3
from typing import Any

from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException

from ds01.jsonbody import JsonBodyError, parse_json

from .decision_log import DecisionLogUnwritable
from .store import StoreRetry, StoreUnavailable

logger = logging.getLogger(__name__)

MAX_BODY = 64 * 1024  # an allocation request is a few hundred bytes


class BadBody(ValueError):
    """The request body is not acceptable JSON (400)."""


def json_body(*, required: bool) -> Any:
    """The request's JSON body (depth and size bounded), None when absent and not required."""
    environ = request.environ
    length = environ.get("CONTENT_LENGTH")
    if "HTTP_TRANSFER_ENCODING" in environ:
        raw = request.get_data(cache=True)  # chunked: werkzeug reads (and bounds) it
    elif not length:
        raw = b""  # HTTP/1.1: no length and no chunks is no body; the stream need not be built
    elif length.isdigit() and int(length) <= MAX_BODY:
        # The server checked the length against what it read: read it without building
        # werkzeug's stream wrappers (a grant pays this on every request).
        raw = environ["wsgi.input"].read(int(length))
    else:
        raw = request.get_data(cache=True)  # too long (werkzeug's 413) or not a number
    if not raw:
        if required:
            raise BadBody("the body must be JSON (Content-Type: application/json)")
        return None
    try:
        return parse_json(raw, max_bytes=MAX_BODY)
    except JsonBodyError as exc:
        raise BadBody(str(exc)) from None


def register_error_handlers(app: Flask) -> None:
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY

    @app.errorhandler(BadBody)
    def bad_body(exc: BadBody):
        return jsonify({"error": "invalid", "message": str(exc)}), 400

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        name = (exc.name or "error").lower().replace(" ", "_")
        return jsonify({"error": name, "message": exc.description or exc.name}), exc.code or 500

    @app.errorhandler(sqlite3.OperationalError)
    @app.errorhandler(DecisionLogUnwritable)
    def state_unwritable(exc: sqlite3.OperationalError | DecisionLogUnwritable):
        logger.error("allocator state: %s", exc)
        message = f"the GPU allocator cannot record allocations right now ({exc}); try again later"
        return jsonify({"error": "unavailable", "message": message}), 503

    @app.errorhandler(StoreUnavailable)
    @app.errorhandler(StoreRetry)
    def store_unavailable(exc: StoreUnavailable | StoreRetry):
        # Nothing was written (the transaction rolled back): the caller may simply retry.
        return jsonify({"error": "store_unavailable", "message": str(exc)}), 503

    @app.errorhandler(Exception)
    def internal(exc: Exception):
        logger.exception("allocator API: %s %s failed", request.method, request.path)
        message = "internal error in the GPU allocator; the admin can find it in its log"
        return jsonify({"error": "internal", "message": message}), 500
