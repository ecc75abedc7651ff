"""An unprivileged local user attacks a running stack; enforcement goes on.

The attacker runs Debian's /usr/bin/python3 (stdlib only) as a user outside the docker group:
no silence and no injected alert reach Alertmanager (401), Prometheus refuses /-/quit, and the
idle GPU container is stopped on time all the same.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.e2e.test_lifecycle import deploy, stops
from tests.gateway.clients import run_as

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

ATTACK = r"""
import json, sys, urllib.request, urllib.error
url, path, method, body = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
data = body.encode() if body else None
request = urllib.request.Request(url + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
try:
    reply = urllib.request.urlopen(request, timeout=10)
    code, text = reply.status, reply.read()
except urllib.error.HTTPError as exc:
    code, text = exc.code, exc.read()
print(code, text.decode(errors="replace").replace("\n", " ")[:200])
"""


def attack_reply(
    user, url: str, path: str, method: str = "POST", body: object = None
) -> tuple[int, str]:
    """The HTTP status and body an unprivileged user gets for one request."""
    text = json.dumps(body) if body is not None else ""
    result = run_as(user, ["/usr/bin/python3", "-c", ATTACK, url, path, method, text])
    assert result.returncode == 0, result.stderr
    code, _, reply = result.stdout.strip().partition(" ")
    return int(code), reply


def attack(user, url: str, path: str, method: str = "POST", body: object = None) -> int:
    return attack_reply(user, url, path, method, body)[0]


def iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def test_a_user_can_neither_silence_nor_block_nor_quit_and_the_idle_container_is_stopped(
    stack, docker_client, eventually, unprivileged_users
):
    mallory = unprivileged_users[0]
    stack.cli(*deploy(stack, "e2e-mine"))
    box = docker_client.containers.get("e2e-mine")
    am, prometheus = stack.endpoints.alertmanager, stack.endpoints.prometheus
    now = time.time()
    silence = {
        "matchers": [{"name": "container_id", "value": box.id, "isRegex": False}],
        "startsAt": iso(now),
        "endsAt": iso(now + 86400),
        "createdBy": mallory.name,
        "comment": "keep mine",
    }
    labels = {
        "alertname": "GPUContainerIdle", "severity": "critical", "action": "stop",
        "reason": "idle", "container_id": box.id, "container": "e2e-mine",
    }  # fmt: skip
    injected = [{"labels": labels, "startsAt": iso(now - 3600)}]

    assert attack(mallory, am, "/api/v2/silences", body=silence) == 401
    assert attack(mallory, am, "/api/v2/alerts", body=injected) == 401
    assert attack(mallory, am, "/api/v1/alerts", body=injected) == 401
    assert attack(mallory, am, "/api/v2/alerts", method="GET") == 401
    assert attack(mallory, prometheus, "/-/quit") == 403
    assert attack(mallory, prometheus, "/-/reload") == 403
    code, reply = attack_reply(mallory, prometheus, "/api/v1/admin/tsdb/snapshot")
    assert code >= 400 and "admin APIs disabled" in reply
    assert attack(mallory, prometheus, "/api/v1/query?query=up", method="GET") == 200

    def stopped() -> bool:
        box.reload()
        return box.status == "exited"

    eventually(stopped, 60, "the idle container stopped by the enforcer")
    recorded = eventually(  # the record is written once Docker's stop has returned
        lambda: stops(stack.endpoints.audit_log), 30, "the stop in the audit log"
    )
    assert [r["container"] for r in recorded] == ["e2e-mine"]
    assert stack.supervisor.failed_children() == []  # Prometheus (and all else) still running
