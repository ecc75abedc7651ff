"""The only place that changes anything: stop, remove, write notices — and checks --dry-run.

Called after re-verification said "act"; returns an `Outcome` for the audit log. Connection
trouble propagates as `facts.Unavailable` (the worker retries); Docker refusing is `failed`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import docker

from ds01.clock import SYSTEM_CLOCK, Clock
from ds01.containers import ContainerFacts
from ds01.durations import format_duration
from ds01.notify_policy import Notifications
from ds01.policy import Policy

from .facts import DockerSource
from .notices import NoticeError, append_notice
from .payload import Alert
from .terminals import TerminalNotifier, terminal_text

logger = logging.getLogger(__name__)

_WHY = {
    "idle": "its GPU has been idle past the idle timeout",
    "max_runtime": "it has run past its maximum runtime",
    "unmanaged": "it uses a GPU that no ds01 allocation gives it",
}


@dataclass(frozen=True)
class Outcome:
    result: str  # stopped | notified | removed | skipped | failed | dry_run
    decision: str  # the audit form, e.g. "stopped", "skipped: gone", "dry-run: would stop"
    detail: str
    # Facts for `container ls`/`history` (deadline, limit): extra keys of the audit record.
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Told:
    """What the channels achieved: `text` for the audit detail, whether any got through."""

    text: str = ""
    attempted: bool = False
    delivered: bool = False

    def add(self, channel: str, note: str, *, ok: bool | None = None) -> Told:
        if channel == "file":
            note = f"notice not written ({note})" if note else "notice written"
        else:
            note = f"{channel}: {note}"
        text = "; ".join(p for p in (self.text, note) if p)
        attempted = self.attempted or ok is not None
        return Told(text, attempted, self.delivered or bool(ok))


class Executor:
    def __init__(
        self,
        docker_source: DockerSource,
        *,
        policy: Policy,
        notice_path: str,
        dry_run: bool = False,
        clock: Clock = SYSTEM_CLOCK,
        terminals: TerminalNotifier | None = None,
        on_delivery: Callable[[str, str], None] = lambda channel, result: None,
    ) -> None:
        self.docker = docker_source
        self.policy = policy
        self.notice_path = notice_path
        self.dry_run = dry_run
        self._clock = clock
        self._terminals = terminals  # None: utmp from the policy in force at each notice
        self._on_delivery = on_delivery  # (channel, delivered|refused|failed): counted

    def _stamp(self) -> str:
        return datetime.fromtimestamp(self._clock.time(), tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    def _clock_time(self) -> str:
        """What a person reads on a terminal: the server's local time, `Mon 14:02 CET`."""
        return (
            datetime.fromtimestamp(self._clock.time(), tz=UTC).astimezone().strftime("%a %H:%M %Z")
        )

    def _write_notice(self, container_id: str, line: str) -> str:
        """Append the line; '' on success, else why not (a notice never blocks an action)."""
        try:
            self.docker.call(
                "notice",
                lambda c: append_notice(
                    c.containers.get(container_id),
                    self.notice_path,
                    line,
                    mtime=self._clock.time(),
                ),
            )
        except NoticeError as exc:
            return str(exc)
        except docker.errors.NotFound:
            return "container gone"
        except docker.errors.APIError as exc:
            return f"docker refused: {exc.explanation or exc}"
        return ""

    def _tell(self, container: ContainerFacts, severity: str, line: str, summary: str) -> Told:
        """Every channel the policy switches on; failures are counted and reported, never raised."""
        told = Told()
        channels: Notifications = self.policy.notifications  # read now: the policy may reload
        if channels.container_file:
            failure = self._write_notice(container.container_id, line)
            self._on_delivery("container_file", "failed" if failure else "delivered")
            told = told.add("file", failure or "", ok=not failure)
        if channels.terminal:
            text = terminal_text(
                severity=severity,
                container=container.name,
                message=summary,
                stamp=self._clock_time(),
            )
            try:
                notifier = self._terminals or TerminalNotifier(channels.utmp_path)
                deliveries = notifier.send(container.user, text)
            except OSError as exc:
                self._on_delivery("terminal", "failed")
                return told.add("terminals", f"utmp unreadable: {exc.strerror}", ok=False)
            for d in deliveries:
                result = {"written": "delivered", "failed": "failed"}.get(d.result, "refused")
                self._on_delivery("terminal", result)
            written = sum(d.result == "written" for d in deliveries)
            note = f"{written} of {len(deliveries)} written" if deliveries else "none open"
            skipped = [f"{d.tty}: {d.detail}" for d in deliveries if d.result != "written"]
            failed = any(d.result == "failed" for d in deliveries)
            ok = True if written else (False if failed else None)  # None: nobody logged in
            told = told.add(
                "terminals", note + (f" ({'; '.join(skipped)})" if skipped else ""), ok=ok
            )
        return told

    def notify(self, container: ContainerFacts, alert: Alert) -> Outcome:
        severity = alert.labels.get("severity", "warning").upper()
        line = f"{self._stamp()} ds01 {severity}: {alert.summary}"
        return self._deliver(container, alert, line, severity.lower(), alert.summary)

    def warn_before_stop(self, container: ContainerFacts, alert: Alert, stop_at: float) -> Outcome:
        """The idle warning the enforcer gives itself when a stop arrives unwarned."""
        at = datetime.fromtimestamp(stop_at, tz=UTC).astimezone().strftime("%a %-d %b %H:%M %Z")
        keep = self.policy.keep_alive
        text = (
            f"GPU container {container.name} of {container.user} "
            f"has an idle GPU and will be stopped at {at} unless the GPU is used again: to keep "
            f"it, touch {keep.path} inside it (valid {format_duration(keep.max_age)}); save your "
            "work to /home or /workspace."
        )
        return self._deliver(
            container, alert, f"{self._stamp()} ds01 WARNING: {text}", "warning", text
        )

    def _deliver(
        self, container: ContainerFacts, alert: Alert, line: str, severity: str, summary: str
    ) -> Outcome:
        if self.dry_run:  # dry-run touches no container: the audit log says what it would do
            logger.info(
                "dry-run: would write notice container=%s user=%s reason=%s line=%r",
                container.name, container.user, alert.reason, line,
            )  # fmt: skip
            return Outcome("dry_run", "dry-run: would notify", f"not written: {line}")
        told = self._tell(container, severity, line, summary)
        logger.info(
            "notice container=%s user=%s reason=%s delivered=%s summary=%r",
            container.name, container.user, alert.reason, told.text, summary,
        )  # fmt: skip
        told_what = {"summary": summary}  # what the owner was told, for their history
        if told.attempted and not told.delivered:
            return Outcome("failed", "failed: notice not written", told.text, told_what)
        return Outcome("notified", "notified", told.text or "every channel is off", told_what)

    def stop(
        self, container: ContainerFacts, alert: Alert, *, deadline: float | None = None
    ) -> Outcome:
        limits = self.policy.limits_for(container.user, container.type, self._clock.now())
        limit = {"idle": limits.idle_timeout, "max_runtime": limits.max_runtime}.get(alert.reason)
        facts = {"deadline": deadline, "limit_seconds": limit, "summary": alert.summary}
        seconds = math.ceil(limits.stop_grace)
        if self.dry_run:
            return Outcome("dry_run", "dry-run: would stop", f"stop grace {seconds}s; not stopped")
        why = _WHY.get(alert.reason, alert.reason)
        text = f"stopping this container now because {why}. {alert.summary}"
        told = self._tell(container, "stop", f"{self._stamp()} ds01: {text}", text)
        notice = told.text or "no notice channel on"
        try:
            self.docker.call("stop", lambda c: c.api.stop(container.container_id, timeout=seconds))
        except docker.errors.NotFound:
            return Outcome("skipped", "skipped: gone", "vanished before the stop")
        except docker.errors.APIError as exc:
            return Outcome("failed", "failed: stop refused", f"{exc.explanation or exc}; {notice}")
        return Outcome("stopped", "stopped", f"stop grace {seconds}s; {notice}", facts)

    def remove(self, container: ContainerFacts) -> Outcome:
        if self.dry_run:
            return Outcome("dry_run", "dry-run: would remove", "not removed")
        try:
            self.docker.call("remove", lambda c: c.api.remove_container(container.container_id))
        except docker.errors.NotFound:
            return Outcome("skipped", "skipped: gone", "vanished before the removal")
        except docker.errors.APIError as exc:
            return Outcome("failed", "failed: remove refused", str(exc.explanation or exc))
        hold = self.policy.container_hold_after_stop or 0.0
        return Outcome("removed", "removed", f"stopped longer than {format_duration(hold)}")
