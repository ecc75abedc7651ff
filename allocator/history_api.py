"""`GET /v1/history`: a caller's own warnings, stops, grants and waits (admins: anyone's)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from flask import Flask, jsonify, request

from .history import HistoryLog, read_tail, select_history

MAX_LIMIT = 1000


def register_history(
    app: Flask,
    *,
    caller: Callable[[], Any],
    sources: Callable[[], list[str | os.PathLike[str] | None]],
    forbidden: type[Exception],
    bad_request: type[Exception],
    log: HistoryLog,
    now: Callable[[], float],
) -> None:
    """Add the routes; `sources` names the audit log and the allocator's history file."""

    @app.post("/v1/history")
    def admin_stop():
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise bad_request("the body must be a JSON object")
        who = caller()
        if not who.admin:
            raise forbidden("only an admin records why they stopped someone's container")
        fields = {}
        for name, limit in (("container_id", 64), ("container", 255), ("owner", 64),
                            ("detail", 500)):  # fmt: skip
            value = body.get(name)
            if not isinstance(value, str) or not value or len(value) > limit:
                raise bad_request(f"{name}: must be a string of 1 to {limit} characters")
            fields[name] = value
        log.write(
            at=now(),
            event="stop",
            user=fields["owner"],
            container=fields["container"],
            container_id=fields["container_id"],
            reason="admin",
            decision="stopped",
            detail=fields["detail"],  # the caller names the admin (the gateway acts for one)
        )
        return jsonify({"recorded": True}), 201

    @app.get("/v1/history")
    def history():
        who = caller()
        asked = request.args.get("user")
        if asked and asked != who.user and not who.admin:
            raise forbidden("only an admin may read another user's history")
        limit = _number(request.args.get("limit", "100"), "limit", bad_request)
        if not 1 <= limit <= MAX_LIMIT or limit != int(limit):
            raise bad_request(f"limit: must be a whole number from 1 to {MAX_LIMIT}")
        since_text = request.args.get("since")
        since = _number(since_text, "since", bad_request) if since_text else None
        log.flush()  # what this allocator decided up to now, its own lines included
        records = [r for path in sources() for r in read_tail(path, mentioning=who.user)]
        chosen = select_history(
            records,
            user=who.user,
            since=since,
            container_id=request.args.get("container_id") or None,
            limit=int(limit),
        )
        return jsonify({"user": who.user, "history": chosen})


def _number(text: str, field: str, bad_request: type[Exception]) -> float:
    try:
        value = float(text)
    except ValueError:
        raise bad_request(f"{field}: must be a number, got {text!r}") from None
    if value != value or value < 0:
        raise bad_request(f"{field}: must be a number >= 0, got {text!r}")
    return value
