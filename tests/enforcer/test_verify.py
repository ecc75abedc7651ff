"""Re-verification decisions, straight from live facts (no I/O)."""

from __future__ import annotations

from types import MappingProxyType

import pytest

from ds01.containers import ContainerFacts
from enforcer.payload import Alert
from enforcer.verify import (
    Deadlines,
    check_warned,
    decide_notify,
    decide_remove,
    decide_stop,
    decide_watch,
)
from tests.enforcer.conftest import make_policy

NOW = 1_800_000_000.0
CID = "c" * 64


def alert(reason: str = "idle", starts_at: float = NOW - 300) -> Alert:
    labels = {"container_id": CID, "reason": reason, "action": "stop"}
    return Alert("firing", "fp", starts_at, CID, reason, "stop", MappingProxyType(labels), {})


def container(**changes) -> ContainerFacts:
    base = dict(
        container_id=CID,
        name="job",
        image="img",
        type="docker",
        user="alice",
        managed=False,
        allocation="",
        gpu_devices=("MIG-1",),
        running=True,
        started_at=NOW - 3600,
        created_at=NOW - 3600,
    )
    base.update(changes)
    return ContainerFacts(**base)


PAST = Deadlines(idle=NOW - 60, runtime=NOW - 60)


def stop(**kw):
    """The worker's order: the container checks, then (only if they pass) the deadline."""
    args = dict(alert=alert(), container=container(), deadlines=PAST, policy=make_policy(), now=NOW)
    args.update(kw)
    return decide_stop(**args)


def test_acts_when_every_check_passes():
    decision = stop()

    assert decision.act
    assert decision.why == "past its idle deadline by 1m"


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"container": None}, "gone"),
        ({"container": container(running=False)}, "not running"),
        (
            {
                "deadlines": Deadlines(idle=NOW - 60, idle_measured_at=NOW - 20),
                "container": container(started_at=NOW - 10),
            },
            "restarted since its idle clock was last measured (a start is busy time)",
        ),  # fmt: skip
        ({"container": container(gpu_devices=())}, "no GPU access"),
        ({"deadlines": Deadlines()}, "no current idle deadline series in Prometheus"),
        ({"deadlines": Deadlines(idle=NOW + 90)}, "not past its idle deadline (due in 1m 30s)"),
        (
            {"deadlines": Deadlines(idle=float("inf"))},
            "idle deadline is not set (keep-alive or exemption)",
        ),
        (
            {"alert": alert("max_runtime"), "deadlines": Deadlines(idle=NOW - 1, runtime=NOW + 5)},
            "not past its runtime deadline (due in 5s)",
        ),
    ],
)
def test_skips_with_the_reason(changes, why):
    decision = stop(**changes)

    assert not decision.act
    assert decision.label == f"skipped: {why}"


def test_protection_comes_from_the_policy_by_name_or_user():
    policy = make_policy(protected={"names": ["ds01-grafana"], "users": ["svc"]})

    assert stop(policy=policy, container=container(name="ds01-grafana")).why == (
        "protected by policy (name ds01-grafana, made by root)"
    )
    assert stop(policy=policy, container=container(stamped_user="svc")).why == (
        "protected by policy (user svc)"
    )
    assert stop(policy=policy).act


def test_a_users_container_named_like_a_protected_one_is_stopped():
    policy = make_policy(protected={"names": ["ds01-grafana"], "users": ["svc"]})
    mine = container(name="ds01-grafana", user="alice", stamped_user="alice")

    assert stop(policy=policy, container=mine).act


def test_protected_user_only_by_the_stamp_never_by_a_home_path():
    policy = make_policy(protected={"users": ["svc"]})
    # No stamp: made by root; the owner "svc" came from a /home/svc mount, which protects nothing.
    by_mount = container(user="svc", stamped_user=None)

    assert stop(policy=policy, container=by_mount).act


@pytest.mark.parametrize("restart_at", [NOW - 3600, NOW - 10])
def test_a_restart_never_undoes_a_runtime_overrun(restart_at):
    """Whatever the alert's startsAt (a sender chooses it), live facts decide."""
    decision = stop(
        alert=alert("max_runtime", starts_at=NOW - 7200),
        container=container(started_at=restart_at),
    )

    assert decision.act


def test_an_early_injected_starts_at_changes_nothing():
    early = alert(starts_at=0.0)

    assert stop(alert=early).act
    assert stop(alert=early, deadlines=Deadlines(idle=NOW + 90)).why == (
        "not past its idle deadline (due in 1m 30s)"
    )


@pytest.mark.parametrize(
    ("facts", "verdict"),
    [
        ({"container": None}, "end"),
        ({"container": container()}, "verify"),  # running again: a quick docker start
        ({"container": container(running=False)}, "keep"),
        ({"container": container(running=False), "still_reported": False}, "end"),
        ({"container": container(running=False), "watched_for": 3600.0}, "end"),
    ],
)
def test_a_stopped_container_is_watched_until_the_exporter_drops_it(facts, verdict):
    args = {"still_reported": True, "watched_for": 10.0, "limit": 3600.0, **facts}

    assert decide_watch(reason="max_runtime", **args).verdict == verdict


def test_after_an_idle_stop_a_restart_ends_the_watch():
    watch = decide_watch(
        reason="idle", container=container(), still_reported=True, watched_for=1.0, limit=60.0
    )
    assert (watch.verdict, watch.why) == (
        "end",
        "running again: a start is busy time; a new idle alert decides",
    )


def test_exemption_applies_only_to_its_kinds_and_dates():
    policy = make_policy(
        exemptions=[{"user": "alice", "from": ["idle"], "until": "2030-01-01", "reason": "thesis"}]
    )

    assert stop(policy=policy).label == "skipped: exempt from idle by policy (thesis)"
    assert stop(policy=policy, alert=alert("max_runtime")).act
    assert stop(policy=policy, now=1_999_999_999.0, alert=alert(starts_at=1_999_999_000.0),
                deadlines=Deadlines(idle=1_999_999_000.0)).act  # fmt: skip


def test_labels_never_exempt():
    exempt_by_label = container(name="job", user="alice")  # labels are not consulted at all

    assert stop(container=exempt_by_label).act


def test_unmanaged_follows_the_join_and_the_policy_action():
    def unmanaged(deadlines, policy=None):
        return stop(alert=alert("unmanaged"), deadlines=deadlines, policy=policy or make_policy())

    assert unmanaged(Deadlines(unmanaged=True)).act
    assert unmanaged(Deadlines(unmanaged=False)).why.startswith("no longer unmanaged")
    assert unmanaged(Deadlines(unmanaged=None)).why == "no current GPU device series in Prometheus"
    notify_only = make_policy(unmanaged_gpu={"action": "notify"})
    assert unmanaged(Deadlines(unmanaged=True), notify_only).why == (
        "policy unmanaged_gpu.action is notify"
    )


def test_warning_needs_no_deadline_but_the_same_container_checks():
    policy = make_policy()

    assert decide_notify(alert=alert(), container=container(), policy=policy, now=NOW).act
    assert decide_notify(alert=alert(), container=None, policy=policy, now=NOW).why == "gone"


def test_removal_only_of_a_still_stopped_ds01_container():
    policy = make_policy()
    stopped = container(type="ds01", running=False, started_at=NOW - 3600)

    assert decide_remove(container=stopped, stopped_at=NOW - 60, policy=policy).act
    assert decide_remove(container=None, stopped_at=NOW, policy=policy).why == "gone"
    assert (
        decide_remove(container=container(type="ds01"), stopped_at=NOW, policy=policy).why
        == "running again"
    )
    assert (
        decide_remove(
            container=container(type="ds01", running=False, started_at=NOW - 10),
            stopped_at=NOW - 60,
            policy=policy,
        ).why
        == "restarted since the stop"
    )
    assert (
        decide_remove(container=container(running=False), stopped_at=NOW, policy=policy).why
        == "not a ds01-native container (type docker)"
    )
    keep = make_policy(container_hold_after_stop=None)
    assert not decide_remove(container=stopped, stopped_at=NOW, policy=keep).act


def test_an_idle_stop_never_warned_warns_now_and_waits_the_warning_period():
    gate = check_warned(warned_at=None, idle_since=NOW - 1800, idle_warning=600, now=NOW)
    assert not gate.decision.act and gate.warn_now
    assert gate.not_before == NOW + 600
    assert gate.decision.why.startswith("not warned yet")


def test_a_warning_from_an_earlier_idle_period_does_not_count():
    gate = check_warned(warned_at=NOW - 4000, idle_since=NOW - 1800, idle_warning=600, now=NOW)
    assert gate.warn_now and gate.not_before == NOW + 600


def test_a_recent_warning_defers_the_stop_until_the_warning_period_has_run():
    gate = check_warned(warned_at=NOW - 100, idle_since=NOW - 1800, idle_warning=600, now=NOW)
    assert not gate.decision.act and not gate.warn_now
    assert gate.not_before == NOW + 500


def test_a_warning_given_at_least_idle_warning_ago_lets_the_stop_go_ahead():
    gate = check_warned(warned_at=NOW - 600, idle_since=NOW - 1800, idle_warning=600, now=NOW)
    assert gate.decision.act and gate.not_before is None
