"""The allocator's HTTP API (JSON, /v1): request, poll, release, list, devices, usage, metrics.

The caller is the uid behind the Unix socket (SO_PEERCRED), never a body field; root, or an
admin on TCP with the bearer token, may act for another user through `user`.
"""

from __future__ import annotations

import functools
import hmac
import logging
import pwd
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from ds01.policy import CONTAINER_TYPES

from .api_errors import json_body, register_error_handlers
from .dispatch import LEAVE_LANE_KEY
from .extension_api import ExtensionBodyError, grant_answer, listing, parse_extension
from .extension_desk import ExtensionDesk
from .history_api import register_history
from .model import Allocation, AllocationRequest, AllocatorError, Denial
from .queue import Waiter
from .server import PEER_ENVIRON_KEY
from .service import Allocator, Forbidden, NotFound

logger = logging.getLogger(__name__)

STATUS_BY_REASON = {
    "invalid": 400,
    "quota": 403,
    "not_allowed": 403,
    "impossible": 409,
    "no_capacity": 503,
    "timeout": 503,
    "extension_refused": 403,
}
MAX_COUNT = 64
_PROFILE = re.compile(r"^\d+g\.\d+gb$")
_USER = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_.@-]{0,63}$")


@dataclass(frozen=True)
class Caller:
    user: str
    admin: bool


class BadRequest(ValueError):
    """A malformed request: the message says which field and why."""


@functools.lru_cache(maxsize=4096)
def user_name(uid: int) -> str:
    """The account name of a uid (cached: it is asked on every request)."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid{uid}"


def identify(
    environ: dict[str, Any], token: str | None, acting_for: Callable[[], Any]
) -> Caller | None:
    """Who calls: the socket's peer uid, or an admin with the token; None = unauthenticated.
    `acting_for()` (the `user` the request names) is asked only of an admin: nobody else may
    act for another user, so nobody else's request needs it parsed."""
    peer = environ.get(PEER_ENVIRON_KEY)
    if peer is not None:
        caller = Caller(user_name(peer.uid), admin=peer.uid == 0)
    else:
        header = environ.get("HTTP_AUTHORIZATION", "")
        if not token or not hmac.compare_digest(header.encode(), f"Bearer {token}".encode()):
            return None
        caller = Caller("root", admin=True)
    named = acting_for() if caller.admin else None
    if named:
        if not isinstance(named, str) or not _USER.match(named):
            raise BadRequest(f"user: not a valid user name: {named!r}")
        return Caller(named, admin=True)
    return caller


def parse_request(body: Any, user: str) -> tuple[AllocationRequest, bool, float]:
    """(request, may queue, seconds to long-poll) from a JSON body; BadRequest otherwise."""
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    count = body.get("count", 1)
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_COUNT:
        raise BadRequest(f"count: must be a whole number from 1 to {MAX_COUNT}, got {count!r}")
    profile = body.get("profile")
    if profile is not None and (not isinstance(profile, str) or not _PROFILE.match(profile)):
        raise BadRequest(f"profile: must look like 3g.71gb, got {profile!r}")
    full_gpu = body.get("full_gpu", False)
    if not isinstance(full_gpu, bool):
        raise BadRequest(f"full_gpu: must be true or false, got {full_gpu!r}")
    ctype = body.get("type", "docker")
    if ctype not in CONTAINER_TYPES:
        raise BadRequest(f"type: must be one of {', '.join(CONTAINER_TYPES)}, got {ctype!r}")
    name = body.get("name", "")
    if not isinstance(name, str) or len(name) > 255:
        raise BadRequest("name: must be a string of at most 255 characters")
    queue = body.get("queue", True)
    if not isinstance(queue, bool):
        raise BadRequest(f"queue: must be true or false, got {queue!r}")
    wait = _seconds(body.get("wait", 0), "wait")
    req = AllocationRequest(user, count, profile, full_gpu, ctype, name)
    return req, queue, wait


def _seconds(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise BadRequest(f"{field}: must be a number of seconds >= 0, got {value!r}")
    return float(value)


def create_app(
    allocator: Allocator,
    *,
    registry: CollectorRegistry | None = None,
    token: str | None = None,
    max_poll: float = 30.0,
    desk: ExtensionDesk | None = None,
    audit_log: str | None = None,
) -> Flask:
    app = Flask("allocator")
    app.json.sort_keys = False  # type: ignore[attr-defined]
    register_error_handlers(app)  # first: the specific handlers below take precedence

    def caller(body: Any = None) -> Caller:
        def acting_for() -> Any:
            named = body.get("user") if isinstance(body, dict) else None
            if named or not request.environ.get("QUERY_STRING"):
                return named
            return request.args.get("user")

        found = identify(request.environ, token, acting_for)
        if found is None:
            raise PermissionError("unauthenticated")
        return found

    def denial(d: Denial, status: int | None = None) -> tuple[Response, int]:
        payload = {"error": d.reason, "message": d.message, **d.details}
        return jsonify(payload), status or STATUS_BY_REASON.get(d.reason, 400)

    def ticket_answer(waiter: Waiter | None, ticket: str) -> tuple[Response, int]:
        if waiter is None:
            return jsonify({"error": "cancelled", "message": "the request left the queue"}), 410
        # Position first (under the allocator's lock), outcome second: a grant made before the
        # position was read is then visible, so a granted request never looks cancelled.
        position = allocator.position(ticket)
        outcome = waiter.outcome
        if outcome is None and not position:
            return jsonify({"error": "cancelled", "message": "the request left the queue"}), 410
        if isinstance(outcome, Allocation):
            return jsonify({"allocation": outcome.to_json()}), 201
        if isinstance(outcome, Denial):
            return denial(outcome)
        remaining = max(0.0, waiter.deadline - allocator.clock.time())
        body = {
            "ticket": waiter.ticket,
            "position": position,
            "remaining": round(remaining, 3),
            "deadline": waiter.deadline,
        }
        return jsonify(body), 202

    @app.errorhandler(BadRequest)
    def bad_request(exc: BadRequest):
        return jsonify({"error": "invalid", "message": str(exc)}), 400

    @app.errorhandler(ExtensionBodyError)
    def bad_extension(exc: ExtensionBodyError):
        return jsonify({"error": "invalid", "message": str(exc)}), 400

    @app.errorhandler(PermissionError)
    def unauthenticated(exc: PermissionError):
        if isinstance(exc, Forbidden):
            return jsonify({"error": "forbidden", "message": str(exc)}), 403
        return jsonify({"error": "unauthenticated", "message": "a bearer token is needed"}), 401

    @app.errorhandler(NotFound)
    def not_found(exc: NotFound):
        return jsonify({"error": "not_found", "message": str(exc)}), 404

    @app.errorhandler(AllocatorError)
    def refused(exc: AllocatorError):
        return denial(exc.denial)

    @app.post("/v1/allocations")
    def allocate():
        body = json_body(required=True)
        who = caller(body)
        req, may_queue, wait = parse_request(body, who.user)
        outcome = allocator.submit(req, wait=may_queue)
        if isinstance(outcome, Allocation):
            return jsonify({"allocation": outcome.to_json()}), 201
        if wait > 0:
            leave_lane = request.environ.get(LEAVE_LANE_KEY)
            if leave_lane is not None:
                leave_lane()  # the next decision need not wait for this long poll
            disconnected = request.environ.get("waitress.client_disconnected")
            waited = allocator.wait(
                outcome.ticket,
                min(wait, max_poll),
                user=who.user,
                admin=who.admin,
                disconnected=disconnected,
            )
            return ticket_answer(waited, outcome.ticket)
        return ticket_answer(outcome, outcome.ticket)

    @app.get("/v1/tickets/<ticket>")
    def poll(ticket: str):
        who = caller()
        try:
            wait = _seconds(float(request.args.get("wait", "0") or 0), "wait")
        except ValueError as exc:
            raise BadRequest(
                f"wait: must be a number of seconds, got {request.args['wait']!r}"
            ) from exc
        waiter = allocator.wait(
            ticket,
            min(wait, max_poll),
            user=who.user,
            admin=who.admin,
            disconnected=request.environ.get("waitress.client_disconnected"),
        )
        return ticket_answer(waiter, ticket)

    @app.delete("/v1/tickets/<ticket>")
    def cancel(ticket: str):
        who = caller()
        allocator.cancel(ticket, user=who.user, admin=who.admin)
        return jsonify({"ticket": ticket, "cancelled": True})

    @app.get("/v1/allocations")
    def list_allocations():
        who = caller()
        everyone = who.admin and request.args.get("all") in ("1", "true", "yes")
        mine = allocator.live(None if everyone else who.user)
        return jsonify({"user": who.user, "allocations": [a.to_json() for a in mine]})

    @app.get("/v1/allocations/<allocation_id>")
    def get_allocation(allocation_id: str):
        who = caller()
        alloc = allocator.get(allocation_id, user=who.user, admin=who.admin)
        return jsonify({"allocation": alloc.to_json()})

    @app.delete("/v1/allocations/<allocation_id>")
    def release(allocation_id: str):
        body = json_body(required=False)
        who = caller(body)
        alloc = allocator.release(allocation_id, user=who.user, admin=who.admin)
        return jsonify({"allocation": alloc.to_json()})

    @app.get("/v1/devices")
    def devices():
        caller()
        return jsonify({"devices": allocator.devices()})

    @app.get("/v1/usage")
    def usage():
        who = caller()
        return jsonify(allocator.usage(who.user))

    @app.post("/v1/extensions")
    def extend():
        if desk is None:
            raise NotFound("extensions are not served here")
        body = json_body(required=True)
        who = caller(body)
        container, seconds, kind = parse_extension(body)
        grant = desk.extend(user=who.user, container=container, seconds=seconds, kind=kind)
        return jsonify(grant_answer(grant)), 201

    @app.get("/v1/extensions")
    def extensions():
        if desk is None:
            raise NotFound("extensions are not served here")
        who = caller()
        everyone = who.admin and request.args.get("all") in ("1", "true", "yes")
        return jsonify(listing(desk, None if everyone else who.user))

    register_history(
        app,
        caller=caller,
        sources=lambda: [audit_log, allocator.history.path],
        forbidden=Forbidden,
        bad_request=BadRequest,
        log=allocator.history,
        now=allocator.clock.time,
    )

    @app.get("/metrics")
    def metrics():
        if registry is None:
            return Response("no registry\n", status=404, mimetype="text/plain")
        return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    def healthz():
        return jsonify({"ok": True, "queue_length": len(allocator.queue)})

    return app
