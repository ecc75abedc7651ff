"""Re-verification at action time: pure decisions over live facts, never the alert alone.

Each function takes keyword-only facts and returns a `Decision` carrying its reason; the
worker gathers the facts (facts.py) and the executor acts (executor.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime

from ds01.containers import ContainerFacts
from ds01.durations import format_duration
from ds01.policy import Policy
from ds01.protection import protection

from .payload import Alert


@dataclass(frozen=True)
class Decision:
    act: bool
    why: str

    @property
    def label(self) -> str:
        """The audit form: `act: <why>` or `skipped: <why>`."""
        return f"act: {self.why}" if self.act else f"skipped: {self.why}"


@dataclass(frozen=True)
class Deadlines:
    """What Prometheus says now about one container (None: no current series)."""

    idle: float | None = None
    runtime: float | None = None
    unmanaged: bool | None = None  # None: the container has no GPU device series
    idle_measured_at: float | None = None  # when the exporter collected the idle facts


def act(why: str) -> Decision:
    return Decision(True, why)


def skip(why: str) -> Decision:
    return Decision(False, why)


def check_container(
    *, alert: Alert, container: ContainerFacts | None, policy: Policy, now: float
) -> Decision:
    """Still there, running, GPU, not protected or exempt — by live facts, never the alert's
    startsAt (a sender chooses it; a restart does not undo a runtime or unmanaged overrun)."""
    if container is None:
        return skip("gone")
    if not container.running:
        return skip("not running")
    if not container.has_gpu and alert.reason != "unmanaged":
        return skip("no GPU access")  # unmanaged: the exporter saw a process (Prometheus decides)
    guard = protection(name=container.name, stamped_user=container.stamped_user, policy=policy)
    if guard.protected:
        return skip(f"protected by policy ({guard.why})")
    at = datetime.fromtimestamp(now, tz=UTC)
    limits = policy.limits_for(container.user, container.type, at)
    kind = alert.reason  # the reasons are the exemption kinds: idle, max_runtime, unmanaged
    exempt = {
        "idle": limits.idle_exempt,
        "max_runtime": limits.runtime_exempt,
        "unmanaged": limits.unmanaged_exempt,
    }[kind]
    if exempt:
        reasons = "; ".join(e.reason for e in limits.exemptions if kind in e.kinds)
        return skip(f"exempt from {kind} by policy ({reasons})")
    return act("container checks passed")


def check_deadline(
    *,
    alert: Alert,
    deadlines: Deadlines,
    policy: Policy,
    now: float,
    container: ContainerFacts | None = None,
) -> Decision:
    """Still past its deadline by current data (the unmanaged join for reason=unmanaged)."""
    if alert.reason == "unmanaged":
        if policy.unmanaged_gpu.action != "stop":
            return skip(f"policy unmanaged_gpu.action is {policy.unmanaged_gpu.action}")
        if deadlines.unmanaged is None:
            return skip("no current GPU device series in Prometheus")
        if not deadlines.unmanaged:
            return skip("no longer unmanaged (a bound allocation holds its devices)")
        return act("unmanaged GPU use confirmed by Prometheus")
    name = "idle" if alert.reason == "idle" else "runtime"
    deadline = deadlines.idle if alert.reason == "idle" else deadlines.runtime
    if deadline is None:
        return skip(f"no current {name} deadline series in Prometheus")
    if math.isinf(deadline) or math.isnan(deadline):
        return skip(f"{name} deadline is not set (keep-alive or exemption)")
    if now < deadline:
        return skip(f"not past its {name} deadline (due in {format_duration(deadline - now)})")
    if alert.reason == "idle" and _restarted_since(container, deadlines.idle_measured_at):
        return skip("restarted since its idle clock was last measured (a start is busy time)")
    return act(f"past its {name} deadline by {format_duration(now - deadline)}")


def _restarted_since(container: ContainerFacts | None, measured_at: float | None) -> bool:
    """A restart grants the start-up grace; Prometheus learns it only after the exporter's next
    collect and scrape."""
    if container is None or container.started_at is None or measured_at is None:
        return False
    return container.started_at > measured_at


def decide_stop(
    *,
    alert: Alert,
    container: ContainerFacts | None,
    deadlines: Deadlines,
    policy: Policy,
    now: float,
) -> Decision:
    """Both checks, in order; the first failing one names the skip."""
    first = check_container(alert=alert, container=container, policy=policy, now=now)
    if not first.act:
        return first
    return check_deadline(
        alert=alert, deadlines=deadlines, policy=policy, now=now, container=container
    )


@dataclass(frozen=True)
class WarningCheck:
    """May an idle stop go ahead; if not, whether to warn now and when to look again."""

    decision: Decision
    warn_now: bool = False
    not_before: float | None = None


def check_warned(
    *, warned_at: float | None, idle_since: float, idle_warning: float, now: float
) -> WarningCheck:
    """An idle stop needs a warning given in this idle period at least `idle_warning` ago.

    `idle_since` is the deadline minus the idle timeout (the container's last busy time): a
    warning before it belonged to an earlier idle period, after which the GPU was used again.
    """
    if warned_at is None or warned_at < idle_since:
        return WarningCheck(
            skip(f"not warned yet: warned now, stop not before {format_duration(idle_warning)}"),
            warn_now=True,
            not_before=now + idle_warning,
        )
    due = warned_at + idle_warning
    if now < due:
        return WarningCheck(
            skip(f"warned {format_duration(now - warned_at)} ago, less than idle_warning"),
            not_before=due,
        )
    return WarningCheck(act(f"warned {format_duration(now - warned_at)} ago"))


def decide_notify(
    *, alert: Alert, container: ContainerFacts | None, policy: Policy, now: float
) -> Decision:
    """A warning goes to a running GPU container that would otherwise be stopped later."""
    return check_container(alert=alert, container=container, policy=policy, now=now)


def decide_remove(
    *, container: ContainerFacts | None, stopped_at: float, policy: Policy
) -> Decision:
    """Remove a stopped ds01-native container only if nobody has restarted it since."""
    if container is None:
        return skip("gone")
    if container.running:
        return skip("running again")
    if container.started_at is not None and container.started_at > stopped_at:
        return skip("restarted since the stop")
    if container.type != "ds01":
        return skip(f"not a ds01-native container (type {container.type})")
    guard = protection(name=container.name, stamped_user=container.stamped_user, policy=policy)
    if guard.protected:
        return skip(f"protected by policy ({guard.why})")
    if policy.container_hold_after_stop is None:
        return skip("policy container_hold_after_stop is null (keep stopped containers)")
    return act("stopped ds01 container past container_hold_after_stop")


@dataclass(frozen=True)
class Watch:
    """What to do with a stopped container under watch: keep watching, end, or verify anew."""

    verdict: str  # "verify" (running again) | "keep" | "end"
    why: str


def decide_watch(
    *,
    reason: str,
    container: ContainerFacts | None,
    still_reported: bool,
    watched_for: float,
    limit: float,
) -> Watch:
    """A stopped container that runs again (a quick `docker start`) past its runtime or still
    unmanaged is verified like a new alert; after an idle stop a start is busy time, so the
    watch ends. It also ends once the exporter no longer reports the container (the alert
    resolves) or at `limit`."""
    if container is None:
        return Watch("end", "container gone")
    if container.running and reason == "idle":
        return Watch("end", "running again: a start is busy time; a new idle alert decides")
    if container.running:
        return Watch("verify", "running again after the stop")
    if not still_reported:
        return Watch("end", "stopped and no longer reported (the alert resolves)")
    if watched_for >= limit:
        return Watch("end", f"watched for {format_duration(watched_for)}; later repeats verify")
    return Watch("keep", "stopped; still reported")
