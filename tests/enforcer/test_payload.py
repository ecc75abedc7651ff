"""Parsing the Alertmanager v4 webhook: what we accept, and the 400 messages for what we don't."""

from __future__ import annotations

import json

import pytest

from enforcer.payload import Alert, PayloadError, parse_body

CID = "a" * 64


def alert(**changes):
    base = {
        "status": "firing",
        "labels": {"container_id": CID, "reason": "idle", "action": "stop", "container": "job"},
        "annotations": {"summary": "idle for 30m"},
        "startsAt": "2025-01-02T03:04:05.123456789Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "fingerprint": "abc123",
        "somethingNew": {"ignored": True},
    }
    base.update(changes)
    return base


def body(*alerts, **top):
    return json.dumps({"version": "4", "status": "firing", "alerts": list(alerts), **top}).encode()


def test_parses_a_v4_webhook_and_ignores_unknown_fields():
    [parsed] = parse_body(body(alert(), receiver="enforcer", extra=1)).alerts

    assert parsed.firing
    assert parsed.fingerprint == "abc123"
    assert parsed.container_id == CID
    assert parsed.reason == "idle"
    assert parsed.action == "stop"
    assert parsed.container == "job"
    assert parsed.summary == "idle for 30m"
    assert parsed.starts_at == pytest.approx(1735787045.123457)


def test_each_alert_keeps_its_own_status_whatever_the_group_status():
    webhook = parse_body(body(alert(), alert(status="resolved"), status="resolved"))

    assert [a.firing for a in webhook.alerts] == [True, False]


def test_round_trips_through_the_journal_form():
    [parsed] = parse_body(body(alert())).alerts

    assert Alert.from_json(json.loads(json.dumps(parsed.to_json()))) == parsed


def test_summary_falls_back_to_the_labels():
    [parsed] = parse_body(body(alert(annotations={}))).alerts

    assert parsed.summary == "container job: GPU idle (stop)"


def test_missing_fingerprint_gets_a_stable_one():
    a = parse_body(body(alert(fingerprint=None))).alerts[0]
    b = parse_body(body(alert(fingerprint=None))).alerts[0]

    assert a.fingerprint == b.fingerprint


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\xff", "body is not valid JSON"),
        (b"nope", "body is not valid JSON"),
        (b'"text"', "body must be a JSON object"),
        (b"{}", "alerts: must be a list"),
        (body("x"), "alerts[0]: must be an object"),
        (body(alert(status="pending")), "alerts[0].status: must be firing or resolved"),
        (body(alert(labels={"reason": "idle", "action": "stop"})), "labels.container_id: required"),
        (body(alert(labels={"container_id": CID, "action": "stop"})), "labels.reason: required"),
        (body(alert(labels={"container_id": CID, "reason": "idle"})), "labels.action: required"),
        (
            body(alert(labels={"container_id": "ZZ", "reason": "idle", "action": "stop"})),
            "container_id: must be 12-64 lowercase hex digits",
        ),
        (
            body(alert(labels={"container_id": CID, "reason": "bored", "action": "stop"})),
            "labels.reason: must be one of idle, max_runtime, unmanaged",
        ),
        (
            body(alert(labels={"container_id": CID, "reason": "idle", "action": "kill"})),
            "labels.action: must be one of notify, stop",
        ),
        (body(alert(labels={"container_id": 5})), "labels: must be an object of strings"),
        (body(alert(startsAt="yesterday")), "startsAt: not an RFC 3339 time"),
        (body(alert(startsAt="2025-13-45T03:04:05Z")), "startsAt: not an RFC 3339 time"),
        (body(alert(startsAt=None)), "startsAt: must be an RFC 3339 time string"),
        (body(alert(startsAt="0001-01-01T00:00:00Z")), "startsAt: must be set"),
        (body(alert(fingerprint="")), "fingerprint: must be a non-empty string"),
    ],
)
def test_malformed_webhooks_are_refused_with_a_reason(raw, message):
    with pytest.raises(PayloadError) as error:
        parse_body(raw)

    assert message in str(error.value)


@pytest.mark.parametrize("opening", [b"[", b'{"a":'])
def test_deeply_nested_json_is_a_payload_error_not_a_crash(opening):
    with pytest.raises(PayloadError, match="nested deeper than 64 levels"):
        parse_body(opening * 50_000)
