"""The webhook receiver (Flask, served by waitress): authenticate, validate, journal, ack.

Nothing here acts on a container: a firing alert is written to the journal before the answer
is sent, and the worker acts on it. 401 without the token, 400 on a malformed body, 413 on an
oversized one, 503 when Docker (or, for stops, Prometheus) is unreachable — the alerts are
journaled anyway, and the 503 makes Alertmanager retry as well. An alert for another node is
answered 200 as `not_mine`, audited, and never journaled (enforcer/node_scope.py).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from werkzeug.exceptions import RequestEntityTooLarge

from ds01.clock import SYSTEM_CLOCK, Clock

from .audit import AuditLog
from .auth import authorized
from .facts import Health
from .intake import Intake
from .journal import Journal
from .metrics import ALERT_STATUSES, EnforcerMetrics
from .node_scope import NODE_LABEL, NodeScope, NodeVerdict, judge_node
from .payload import Alert, PayloadError, parse_body
from .worker import WorkerHealth

logger = logging.getLogger(__name__)

DEFAULT_MAX_BODY = 4 * 1024 * 1024
# endpoint -> (the action label it handles, the journal kind, what re-verification needs)
ENDPOINTS = {
    "alerts": ("stop", "stop", ("docker", "prometheus")),
    "notify": ("notify", "notify", ("docker",)),
}


def create_app(
    *,
    token: str,
    journal: Journal,
    metrics: EnforcerMetrics,
    health: Health | None = None,
    on_enqueue: Callable[[], None] = lambda: None,
    intake: Intake | None = None,
    clock: Clock = SYSTEM_CLOCK,
    max_body: int = DEFAULT_MAX_BODY,
    worker_health: Callable[[], WorkerHealth] | None = None,
    node_scope: Callable[[], NodeScope] | None = None,
    audit: AuditLog | None = None,
) -> Flask:
    """The webhook app; without `node_scope` every alert is this node's (the pre-cluster app)."""
    app = Flask("enforcer")
    intake = intake or Intake()
    app.config["MAX_CONTENT_LENGTH"] = max_body

    # Counter children resolved once: labels() per webhook is a measurable share of an ack.
    counted = {
        (endpoint, status): metrics.alerts.labels(endpoint, status)
        for endpoint in ENDPOINTS
        for status in ALERT_STATUSES
    }

    answered: dict[tuple[str, int], Any] = {}  # the same for the request counter, by code

    def answer(endpoint: str, code: int, body: dict) -> tuple[Response, int]:
        child = answered.get((endpoint, code))
        if child is None:
            child = answered[endpoint, code] = metrics.requests.labels(endpoint, str(code))
        child.inc()
        return jsonify(body), code

    def receive(endpoint: str) -> tuple[Response, int]:
        action, kind, needs = ENDPOINTS[endpoint]
        if not authorized(request.headers.get("Authorization"), token):
            logger.warning("unauthorized POST /%s from %s", endpoint, request.remote_addr)
            reply, code = answer(endpoint, 401, {"error": "unauthorized"})
            reply.headers["WWW-Authenticate"] = "Bearer"
            return reply, code
        if request.content_length is not None and request.content_length > max_body:
            return answer(endpoint, 413, {"error": f"body larger than {max_body} bytes"})
        try:
            webhook = parse_body(request.get_data(cache=False))
        except RequestEntityTooLarge:
            return answer(endpoint, 413, {"error": f"body larger than {max_body} bytes"})
        except PayloadError as exc:
            logger.warning("malformed POST /%s: %s", endpoint, exc)
            return answer(endpoint, 400, {"error": str(exc)})

        resolved, wrong, firing = _sort_alerts(webhook.alerts, action)
        firing, foreign = _split_by_node(firing, node_scope() if node_scope else None)
        if foreign:
            _refuse_foreign(endpoint, kind, foreign, audit)
        for alert in wrong:
            logger.warning(
                "POST /%s: alert %s has action=%s, which this endpoint does not handle; ignored",
                endpoint, alert.fingerprint, alert.action,
            )  # fmt: skip
        try:
            new = journal.enqueue(kind, firing, now=clock.time())
        except sqlite3.Error:
            logger.exception("journal write failed; nothing accepted")
            return answer(endpoint, 503, {"error": "journal unavailable, retry later"})
        accepted = sum(new)
        for status, count in (
            ("accepted", accepted),
            ("duplicate", len(new) - accepted),
            ("resolved", len(resolved)),
            ("wrong_endpoint", len(wrong)),
            ("not_mine", len(foreign)),
        ):
            if count:
                counted[endpoint, status].inc(count)
        if accepted:
            on_enqueue()
        body: dict[str, int | str] = {
            "accepted": accepted,
            "duplicates": len(new) - accepted,
            "resolved_skipped": len(resolved),
            "ignored": len(wrong),
        }
        if foreign:
            body["not_mine"] = len(foreign)
            body["detail"] = "; ".join(sorted({verdict.why for _, verdict in foreign}))
        down = [d for d in needs if health is not None and firing and not health.ok(d)]
        if down:
            body["error"] = f"{' and '.join(down)} unreachable; alerts journaled, retry later"
            return answer(endpoint, 503, body)
        return answer(endpoint, 200, body)

    @app.post("/alerts")
    def alerts() -> tuple[Response, int]:
        with intake.receiving():
            return receive("alerts")

    @app.post("/notify")
    def notify() -> tuple[Response, int]:
        with intake.receiving():
            return receive("notify")

    @app.get("/healthz")
    def healthz() -> tuple[Response, int]:
        try:
            stats = journal.stats()
        except sqlite3.Error:
            logger.exception("journal unreadable")
            return jsonify({"status": "journal unreadable"}), 503
        body = {"status": "ok", "queue_depth": stats.depth}
        workers = worker_health() if worker_health is not None else None
        if workers is not None:
            body["workers"] = workers.detail
            if not workers.ok:
                body["status"] = "workers unhealthy"
                return jsonify(body), 503
        return jsonify(body), 200

    @app.get("/metrics")
    def metrics_page() -> Response:
        return Response(generate_latest(metrics.registry), content_type=CONTENT_TYPE_LATEST)

    return app


def _sort_alerts(
    alerts: tuple[Alert, ...], action: str
) -> tuple[list[Alert], list[Alert], list[Alert]]:
    """(resolved, firing for another endpoint's action, firing for this one), in one pass."""
    resolved: list[Alert] = []
    wrong: list[Alert] = []
    firing: list[Alert] = []
    for alert in alerts:
        if alert.status != "firing":
            resolved.append(alert)
        elif alert.action != action:
            wrong.append(alert)
        else:
            firing.append(alert)
    return resolved, wrong, firing


def _split_by_node(
    alerts: list[Alert], scope: NodeScope | None
) -> tuple[list[Alert], list[tuple[Alert, NodeVerdict]]]:
    """This node's alerts, and the others with the verdict that says why they are not (each
    alert judged; a verdict depends on the node label alone, so one per label value)."""
    if scope is None:
        return alerts, []
    mine: list[Alert] = []
    foreign: list[tuple[Alert, NodeVerdict]] = []
    verdicts: dict[str, NodeVerdict] = {}
    for alert in alerts:
        node = alert.labels.get(NODE_LABEL, "")
        verdict = verdicts.get(node)
        if verdict is None:
            verdict = verdicts[node] = judge_node(alert_node=node, scope=scope)
        if verdict.mine:
            mine.append(alert)
        else:
            foreign.append((alert, verdict))
    return mine, foreign


def _refuse_foreign(
    endpoint: str, kind: str, foreign: list[tuple[Alert, NodeVerdict]], audit: AuditLog | None
) -> None:
    """One audit line per alert of another node; nothing else happens to it."""
    for alert, verdict in foreign:
        logger.warning(
            "POST /%s: alert %s container=%s %s; not acted on",
            endpoint, alert.fingerprint, alert.container or alert.container_id[:12], verdict.why,
        )  # fmt: skip
        if audit is None:
            continue
        try:
            audit.write(
                event=kind,
                container_id=alert.container_id,
                container=alert.container,
                user=alert.user,
                reason=alert.reason,
                fingerprint=alert.fingerprint,
                decision="not_mine",
                detail=verdict.why,
                alert_node=verdict.alert_node,
                node=verdict.own_node,
                starts_at=alert.starts_at,
            )
        except OSError:
            logger.exception("audit write failed for a not-mine alert %s", alert.fingerprint)
