"""The policy's `notifications:` section: which channels tell owners about warnings and stops.

Kept apart from `policy.py` so the channels can grow without touching every other key. The
parser raises `NotificationsError(key, reason)`; `policy.py` turns it into a `PolicyError`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

USER_PLACEHOLDER = "{{ user }}"
# What Alertmanager's email `to` gets in place of the placeholder: alerts are grouped per
# container, so every alert of a notification carries the same (door-stamped) `user` label.
ALERTMANAGER_USER = "{{ .CommonLabels.user }}"
_ADDRESS = re.compile(r"^[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}$")
_USER = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_.-]{0,63}$")
_HOST_PORT = re.compile(r"^[A-Za-z0-9.\[\]:-]+:\d{1,5}$")

_KEYS = ("terminal", "container_file", "email", "utmp_path")
_EMAIL_KEYS = ("to", "addresses", "from", "smarthost", "require_tls", "send_resolved")


class NotificationsError(ValueError):
    def __init__(self, key: str, reason: str) -> None:
        self.key, self.reason = key, reason
        super().__init__(f"{key}: {reason}")


@dataclass(frozen=True)
class EmailNotifications:
    """Mail through Alertmanager: `addresses` first, else the `to` template (None: no mail)."""

    sender: str
    smarthost: str
    to_template: str | None = None  # e.g. "{{ user }}@example.org"
    addresses: Mapping[str, str] = field(default_factory=dict)
    require_tls: bool = True
    send_resolved: bool = False

    def address_for(self, user: str) -> str | None:
        """Where `user`'s mail goes (what the Alertmanager routes implement), None: nowhere."""
        if user in self.addresses:
            return self.addresses[user]
        if self.to_template and _USER.match(user):
            return self.to_template.replace(USER_PLACEHOLDER, user)
        return None

    def alertmanager_to(self) -> str | None:
        """The template's Alertmanager form (the `to` of the catch-all email receiver)."""
        if self.to_template is None:
            return None
        return self.to_template.replace(USER_PLACEHOLDER, ALERTMANAGER_USER)


@dataclass(frozen=True)
class Notifications:
    """Each channel switched on its own; a failing channel is counted and never blocks a stop."""

    terminal: bool = True
    container_file: bool = True
    email: EmailNotifications | None = None
    utmp_path: str = "/var/run/utmp"


def _boolean(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise NotificationsError(key, f"must be true or false, got {value!r}")
    return value


def _text(value: Any, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise NotificationsError(key, f"must be a non-empty string, got {value!r}")
    return value


def _mapping(value: Any, key: str, allowed: tuple[str, ...] | None) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise NotificationsError(key, f"must be a mapping, got {type(value).__name__}")
    for name in value:
        if not isinstance(name, str):
            raise NotificationsError(key, f"keys must be strings, got {name!r}")
        if allowed is not None and name not in allowed:
            raise NotificationsError(
                f"{key}.{name}", f"unknown key (expected one of: {', '.join(allowed)})"
            )
    return value


def _template(value: Any, key: str) -> str:
    text = _text(value, key)
    if text.count(USER_PLACEHOLDER) != 1 or text.replace(USER_PLACEHOLDER, "").count("{{"):
        raise NotificationsError(
            key, f"must hold {USER_PLACEHOLDER} exactly once and no other template, got {text!r}"
        )
    if not _ADDRESS.match(text.replace(USER_PLACEHOLDER, "user")):
        raise NotificationsError(
            key, f"is not an address template like {{{{ user }}}}@example.org: {text!r}"
        )
    return text


def _email(value: Any, key: str) -> EmailNotifications | None:
    raw = _mapping(value, key, _EMAIL_KEYS)
    if not raw:
        return None
    addresses: dict[str, str] = {}
    for user, address in _mapping(raw.get("addresses"), f"{key}.addresses", None).items():
        if not _USER.match(user):
            raise NotificationsError(f"{key}.addresses", f"not a user name: {user!r}")
        if not isinstance(address, str) or not _ADDRESS.match(address):
            raise NotificationsError(f"{key}.addresses.{user}", f"not an address: {address!r}")
        addresses[user] = address
    template = _template(raw["to"], f"{key}.to") if raw.get("to") is not None else None
    if template is None and not addresses:
        raise NotificationsError(key, "give `to` (an address template) or `addresses`, or drop it")
    sender = _text(raw.get("from"), f"{key}.from")
    if not _ADDRESS.match(sender):
        raise NotificationsError(f"{key}.from", f"not an address: {sender!r}")
    smarthost = _text(raw.get("smarthost"), f"{key}.smarthost")
    if not _HOST_PORT.match(smarthost):
        raise NotificationsError(f"{key}.smarthost", f"must be HOST:PORT, got {smarthost!r}")
    return EmailNotifications(
        sender=sender,
        smarthost=smarthost,
        to_template=template,
        addresses=addresses,
        require_tls=_boolean(raw.get("require_tls", True), f"{key}.require_tls"),
        send_resolved=_boolean(raw.get("send_resolved", False), f"{key}.send_resolved"),
    )


def parse_notifications(value: Any, key: str = "notifications") -> Notifications:
    """The section as frozen records; NotificationsError names the key and the reason."""
    raw = _mapping(value, key, _KEYS)
    base = Notifications()
    utmp = _text(raw.get("utmp_path", base.utmp_path), f"{key}.utmp_path")
    if not utmp.startswith("/"):
        raise NotificationsError(f"{key}.utmp_path", f"must be an absolute path, got {utmp!r}")
    return Notifications(
        terminal=_boolean(raw.get("terminal", base.terminal), f"{key}.terminal"),
        container_file=_boolean(
            raw.get("container_file", base.container_file), f"{key}.container_file"
        ),
        email=_email(raw.get("email"), f"{key}.email"),
        utmp_path=utmp,
    )


def notification_channels(n: Notifications) -> str:
    """One line for `ds01 check-config`: which channels tell owners, and where mail goes."""
    parts = []
    if n.terminal:
        parts.append(f"their terminals (utmp {n.utmp_path})")
    if n.container_file:
        parts.append("the container's notice file")
    if n.email is not None:
        where = n.email.to_template or "mapped users only"
        mapped = f", {len(n.email.addresses)} mapped" if n.email.addresses else ""
        parts.append(f"mail to {where}{mapped} via {n.email.smarthost}")
    return ", ".join(parts) or "nothing (every channel is off)"
