"""A real SMTP server that keeps what it receives: the sink for Alertmanager's email receiver."""

from __future__ import annotations

import email
import email.policy
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage

import pytest

from ds01.stack import free_port
from tests.harness.components import missing


@dataclass(frozen=True)
class Mail:
    sender: str
    recipients: tuple[str, ...]
    message: EmailMessage

    @property
    def subject(self) -> str:
        return str(self.message["Subject"] or "")

    @property
    def text(self) -> str:
        part = self.message.get_body(preferencelist=("plain",))
        return part.get_content() if part is not None else ""


class SmtpSink:
    """aiosmtpd on a free loopback port; `mails` is every message accepted so far."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        self._lock = threading.Lock()
        self._mails: list[Mail] = []
        self.port = free_port()
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)

    @property
    def smarthost(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def handle_DATA(self, server, session, envelope) -> str:  # aiosmtpd's handler hook
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        mail = Mail(envelope.mail_from, tuple(envelope.rcpt_tos), message)  # type: ignore[arg-type]
        with self._lock:
            self._mails.append(mail)
        return "250 OK"

    def mails(self, to: str | None = None) -> list[Mail]:
        with self._lock:
            return [m for m in self._mails if to is None or to in m.recipients]

    def start(self) -> None:
        self._controller.start()

    def stop(self) -> None:
        self._controller.stop()


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    try:
        import aiosmtpd  # noqa: F401
    except ImportError:
        missing("aiosmtpd is not installed (pip install -e '.[test]')")
    sink = SmtpSink()
    sink.start()
    yield sink
    sink.stop()
