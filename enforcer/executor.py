"""The only place that changes anything: stop, remove, write notices — and checks --dry-run.

Called after re-verification said "act"; returns an `Outcome` for the audit log. Connection
trouble propagates as `facts.Unavailable` (the worker retries); Docker refusing is `failed`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import UTC, datetime

import docker

from ds01.clock import SYSTEM_CLOCK, Clock
from ds01.containers import ContainerFacts
from ds01.durations import format_duration
from ds01.policy import Policy

from .facts import DockerSource
from .notices import NoticeError, append_notice
from .payload import Alert

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


class Executor:
    def __init__(
        self,
        docker_source: DockerSource,
        *,
        policy: Policy,
        notice_path: str,
        dry_run: bool = False,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.docker = docker_source
        self.policy = policy
        self.notice_path = notice_path
        self.dry_run = dry_run
        self._clock = clock

    def _stamp(self) -> str:
        return datetime.fromtimestamp(self._clock.time(), tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

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

    def notify(self, container: ContainerFacts, alert: Alert) -> Outcome:
        severity = alert.labels.get("severity", "warning").upper()
        line = f"{self._stamp()} ds01 {severity}: {alert.summary}"
        return self._deliver(container, alert, line)

    def warn_before_stop(self, container: ContainerFacts, alert: Alert, stop_at: float) -> Outcome:
        """The idle warning the enforcer gives itself when a stop arrives unwarned."""
        at = datetime.fromtimestamp(stop_at, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        keep = self.policy.keep_alive
        line = (
            f"{self._stamp()} ds01 WARNING: GPU container {container.name} of {container.user} "
            f"has an idle GPU and will be stopped at {at} unless the GPU is used again: to keep "
            f"it, touch {keep.path} inside it (valid {format_duration(keep.max_age)}); save your "
            "work to /home or /workspace."
        )
        return self._deliver(container, alert, line)

    def _deliver(self, container: ContainerFacts, alert: Alert, line: str) -> Outcome:
        if self.dry_run:  # dry-run touches no container: the audit log says what it would do
            logger.info(
                "dry-run: would write notice container=%s user=%s reason=%s line=%r",
                container.name, container.user, alert.reason, line,
            )  # fmt: skip
            return Outcome("dry_run", "dry-run: would notify", f"not written: {line}")
        failure = self._write_notice(container.container_id, line)
        logger.info(
            "notice container=%s user=%s reason=%s written=%s summary=%r",
            container.name, container.user, alert.reason, not failure, alert.summary,
        )  # fmt: skip
        if failure:
            return Outcome("failed", "failed: notice not written", failure)
        return Outcome("notified", "notified", f"appended to {self.notice_path}")

    def stop(self, container: ContainerFacts, alert: Alert) -> Outcome:
        limits = self.policy.limits_for(container.user, container.type, self._clock.now())
        seconds = math.ceil(limits.stop_grace)
        if self.dry_run:
            return Outcome("dry_run", "dry-run: would stop", f"stop grace {seconds}s; not stopped")
        why = _WHY.get(alert.reason, alert.reason)
        line = f"{self._stamp()} ds01: stopping this container now because {why}. {alert.summary}"
        failure = self._write_notice(container.container_id, line)
        notice = f"notice not written ({failure})" if failure else "notice written"
        try:
            self.docker.call("stop", lambda c: c.api.stop(container.container_id, timeout=seconds))
        except docker.errors.NotFound:
            return Outcome("skipped", "skipped: gone", "vanished before the stop")
        except docker.errors.APIError as exc:
            return Outcome("failed", "failed: stop refused", f"{exc.explanation or exc}; {notice}")
        return Outcome("stopped", "stopped", f"stop grace {seconds}s; {notice}")

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
