"""`ds01 check-config FILE --what-if`: what a candidate policy would do to the running
containers now — who is warned or stopped at once, whose deadlines move, who is over quota.

Pure: the facts come in (from Prometheus: the exporter's and the allocator's series), the
verdicts go out. The deadlines are those of exporter/deadlines.py, so the answer is what the
exporter would publish under the candidate, granted extensions included.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from exporter.deadlines import idle_deadline, runtime_deadline

from .policy import Policy
from .protection import protection


@dataclass(frozen=True)
class RunningContainer:
    """What Prometheus knows of one running GPU container."""

    container_id: str
    name: str
    user: str
    type: str
    first_start: float
    last_busy: float
    keep_alive: bool
    idle_deadline: float  # as published now (extensions included)
    runtime_deadline: float


@dataclass(frozen=True)
class ContainerVerdict:
    container_id: str
    name: str
    user: str
    group: str  # under the candidate
    action: str  # stop | warn | none
    reason: str  # idle | max_runtime | "" (none)
    protected: bool
    idle_deadline: float
    runtime_deadline: float
    idle_moves_by: float  # seconds (negative = earlier); 0 when unchanged or both infinite
    runtime_moves_by: float


@dataclass(frozen=True)
class QuotaVerdict:
    user: str
    group: str
    holding: int
    max_gpus: int


@dataclass(frozen=True)
class WhatIf:
    at: float
    containers: tuple[ContainerVerdict, ...]
    over_quota: tuple[QuotaVerdict, ...]

    def stopped(self) -> list[str]:
        return [c.name for c in self.containers if c.action == "stop"]


def _moves(new: float, old: float) -> float:
    if math.isinf(new) and math.isinf(old):
        return 0.0
    if math.isinf(new) or math.isinf(old):
        return math.inf if math.isinf(new) else -math.inf
    return new - old


def _extension(published: float, base: float) -> float:
    """The extension granted on top of the installed policy's deadline (0 when none shows)."""
    if math.isinf(published) or math.isinf(base):
        return 0.0
    return max(0.0, published - base)


def judge_container(
    c: RunningContainer, *, installed: Policy, candidate: Policy, now: float
) -> ContainerVerdict:
    at = datetime.fromtimestamp(now, tz=UTC)
    old = installed.limits_for(c.user, c.type, at)
    new = candidate.limits_for(c.user, c.type, at)
    old_idle = idle_deadline(
        last_busy=c.last_busy,
        idle_timeout=old.idle_timeout,
        idle_exempt=old.idle_exempt,
        keep_alive=c.keep_alive,
    )
    old_run = runtime_deadline(
        first_start=c.first_start, max_runtime=old.max_runtime, runtime_exempt=old.runtime_exempt
    )
    idle = idle_deadline(
        last_busy=c.last_busy,
        idle_timeout=new.idle_timeout,
        idle_exempt=new.idle_exempt,
        keep_alive=c.keep_alive,
        extension=_extension(c.idle_deadline, old_idle.at),
    ).at
    run = runtime_deadline(
        first_start=c.first_start,
        max_runtime=new.max_runtime,
        runtime_exempt=new.runtime_exempt,
        extension=_extension(c.runtime_deadline, old_run.at),
    ).at
    action, reason = "none", ""
    if now >= run:
        action, reason = "stop", "max_runtime"
    elif now >= idle:
        action, reason = "stop", "idle"
    elif now >= run - candidate.runtime_warning:
        action, reason = "warn", "max_runtime"
    elif now >= idle - candidate.idle_warning:
        action, reason = "warn", "idle"
    # The exporter's `user` stands in for the gateway's stamp (advisory: the enforcer decides
    # on the stamp itself); "unknown" is treated as no stamp.
    stamped = None if c.user == "unknown" else c.user
    protected = protection(name=c.name, stamped_user=stamped, policy=candidate).protected
    if protected:
        action = "none"
    return ContainerVerdict(
        container_id=c.container_id,
        name=c.name,
        user=c.user,
        group=new.group,
        action=action,
        reason=reason,
        protected=protected,
        idle_deadline=idle,
        runtime_deadline=run,
        idle_moves_by=_moves(idle, c.idle_deadline),
        runtime_moves_by=_moves(run, c.runtime_deadline),
    )


def over_quota(holdings: Mapping[str, int], candidate: Policy) -> list[QuotaVerdict]:
    result = []
    for user, holding in sorted(holdings.items()):
        group = candidate.group_of(user)
        if group.max_gpus is not None and holding > group.max_gpus:
            result.append(QuotaVerdict(user, group.name, holding, group.max_gpus))
    return result


def what_if(
    containers: Iterable[RunningContainer],
    holdings: Mapping[str, int],
    *,
    installed: Policy,
    candidate: Policy,
    now: float,
) -> WhatIf:
    verdicts = tuple(
        judge_container(c, installed=installed, candidate=candidate, now=now)
        for c in sorted(containers, key=lambda c: (c.user, c.name))
    )
    return WhatIf(now, verdicts, tuple(over_quota(holdings, candidate)))
