"""The Alertmanager v4 webhook payload, parsed and validated into frozen records.

Unknown fields are ignored; anything we rely on that is missing or malformed raises
`PayloadError` with the alert index and the field, so the sender gets a 400 that says why.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Any

from ds01.containers import parse_docker_time
from ds01.jsonbody import JsonBodyError, parse_json

REQUIRED_LABELS = ("container_id", "reason", "action")
REASONS = ("idle", "max_runtime", "unmanaged")
ACTIONS = ("notify", "stop")
_CONTAINER_ID = re.compile(r"^[0-9a-f]{12,64}$")


class PayloadError(ValueError):
    """A webhook body we refuse as a whole (400): nothing in it is acted on."""


@dataclass(frozen=True)
class Alert:
    """One alert of a webhook, with the labels the enforcer acts on pulled out."""

    status: str  # firing | resolved
    fingerprint: str
    starts_at: float  # Unix seconds
    container_id: str
    reason: str
    action: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]

    @property
    def firing(self) -> bool:
        return self.status == "firing"

    @property
    def container(self) -> str:
        return self.labels.get("container", "")

    @property
    def user(self) -> str:
        return self.labels.get("user", "")

    @property
    def summary(self) -> str:
        """What to tell the owner: the rule's summary, else a sentence built from the labels."""
        text = self.annotations.get("summary") or self.annotations.get("description")
        if text:
            return text
        name = self.container or self.container_id[:12]
        what = {"idle": "GPU idle", "max_runtime": "maximum runtime", "unmanaged": "unmanaged GPU"}
        return f"container {name}: {what.get(self.reason, self.reason)} ({self.action})"

    def to_json(self) -> dict[str, Any]:
        """The form kept in the journal (enough to rebuild the record after a restart)."""
        return {
            "status": self.status,
            "fingerprint": self.fingerprint,
            "startsAt": self.starts_at,
            "labels": dict(self.labels),
            "annotations": dict(self.annotations),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Alert:
        labels = {str(k): str(v) for k, v in data["labels"].items()}
        return cls(
            status=data["status"],
            fingerprint=data["fingerprint"],
            starts_at=float(data["startsAt"]),
            container_id=labels["container_id"],
            reason=labels["reason"],
            action=labels["action"],
            labels=MappingProxyType(labels),
            annotations=MappingProxyType(dict(data.get("annotations") or {})),
        )


@dataclass(frozen=True)
class Webhook:
    """What we use of a webhook: its alerts, each judged on its own (never the group status)."""

    alerts: tuple[Alert, ...]
    receiver: str = ""


def parse_body(body: bytes) -> Webhook:
    """Bytes of a POST body -> Webhook, or PayloadError naming what is wrong (depth bounded:
    a deeply nested body is a 400, not a RecursionError)."""
    try:
        data = parse_json(body, max_bytes=len(body))  # the app bounds the size (413)
    except JsonBodyError as exc:
        raise PayloadError(str(exc)) from None
    return parse_webhook(data)


def parse_webhook(data: Any) -> Webhook:
    if not isinstance(data, Mapping):
        raise PayloadError("body must be a JSON object (an Alertmanager webhook)")
    raw_alerts = data.get("alerts")
    if not isinstance(raw_alerts, list):
        raise PayloadError("alerts: must be a list")
    alerts = tuple(_alert(raw, f"alerts[{i}]") for i, raw in enumerate(raw_alerts))
    receiver = data.get("receiver")
    return Webhook(alerts=alerts, receiver=receiver if isinstance(receiver, str) else "")


def _strings(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if isinstance(value, Mapping):
        for k, v in value.items():  # a plain loop: this runs for every label of every alert
            if type(k) is not str or type(v) is not str:
                break
        else:
            return dict(value)
    raise PayloadError(f"{where}: must be an object of strings")


def _alert(raw: Any, where: str) -> Alert:
    if not isinstance(raw, Mapping):
        raise PayloadError(f"{where}: must be an object")
    status = raw.get("status")
    if status not in ("firing", "resolved"):
        raise PayloadError(f"{where}.status: must be firing or resolved, got {status!r}")
    labels = _strings(raw.get("labels"), f"{where}.labels")
    annotations = _strings(raw.get("annotations"), f"{where}.annotations")
    for name in REQUIRED_LABELS:
        if not labels.get(name):
            raise PayloadError(f"{where}.labels.{name}: required label is missing")
    if not _CONTAINER_ID.match(labels["container_id"]):
        raise PayloadError(f"{where}.labels.container_id: must be 12-64 lowercase hex digits")
    if labels["reason"] not in REASONS:
        raise PayloadError(f"{where}.labels.reason: must be one of {', '.join(REASONS)}")
    if labels["action"] not in ACTIONS:
        raise PayloadError(f"{where}.labels.action: must be one of {', '.join(ACTIONS)}")
    starts_at = _time(raw.get("startsAt"), f"{where}.startsAt")
    fingerprint = raw.get("fingerprint")
    if fingerprint is None:
        fingerprint = _fingerprint(labels)  # Alertmanager always sends one; hand-made posts may not
    elif not isinstance(fingerprint, str) or not fingerprint:
        raise PayloadError(f"{where}.fingerprint: must be a non-empty string")
    return Alert(
        status=status,
        fingerprint=fingerprint,
        starts_at=starts_at,
        container_id=labels["container_id"],
        reason=labels["reason"],
        action=labels["action"],
        labels=MappingProxyType(labels),
        annotations=MappingProxyType(annotations),
    )


def _time(value: Any, where: str) -> float:
    if not isinstance(value, str):
        raise PayloadError(f"{where}: must be an RFC 3339 time string")
    if value.endswith("Z") and not value.startswith("0001-"):
        try:  # what Alertmanager sends; Python 3.11 reads it, nanoseconds truncated
            return datetime.fromisoformat(value).timestamp()
        except ValueError:
            pass  # the general parser below says what is wrong
    try:
        parsed = parse_docker_time(value)
    except ValueError:
        raise PayloadError(f"{where}: not an RFC 3339 time: {value!r}") from None
    if parsed is None:
        raise PayloadError(f"{where}: must be set")
    return parsed


def _fingerprint(labels: Mapping[str, str]) -> str:
    text = json.dumps(sorted(labels.items()), separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
