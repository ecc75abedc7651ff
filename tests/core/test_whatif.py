"""The pure what-if judgement: a candidate policy against running containers' facts."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest

from ds01.gpu_status.query import Sample
from ds01.policy import parse_policy
from ds01.whatif import RunningContainer, what_if
from ds01.whatif_report import containers_from, holdings_from, render_text, to_json

NOW = 1_000_000.0
INSTALLED = parse_policy(
    {
        "users": {"ann": "student", "ben": "student", "cat": "researcher"},
        "idle_timeout": "30m",
        "idle_warning": "10m",
        "runtime_warning": "1h",
        "protected": {"users": ["cat"]},
    }
)


def _running(name: str, user: str, *, idle_for: float, ran_for: float, ext: float = 0.0):
    """Facts as the exporter publishes them under INSTALLED (student: 30m idle, 24h run)."""
    start, last_busy = NOW - ran_for, NOW - idle_for
    limits = INSTALLED.limits_for(user, "ds01", datetime.now(UTC))
    return RunningContainer(
        container_id=name * 8,
        name=name,
        user=user,
        type="ds01",
        first_start=start,
        last_busy=last_busy,
        keep_alive=False,
        idle_deadline=last_busy + limits.idle_timeout,
        runtime_deadline=start + limits.max_runtime + ext,
    )


def _candidate(**changes):
    base = {
        "users": {"ann": "student", "ben": "student", "cat": "researcher"},
        "protected": {"users": ["cat"]},
    }
    return parse_policy({**base, **changes})


def test_a_stricter_idle_timeout_names_exactly_the_containers_past_it():
    running = [
        _running("a-idle", "ann", idle_for=25 * 60, ran_for=3600),
        _running("b-busy", "ben", idle_for=60, ran_for=3600),
        _running("b-warm", "ben", idle_for=12 * 60, ran_for=3600),
    ]
    strict = _candidate(idle_timeout="20m", idle_warning="10m")
    result = what_if(running, {}, installed=INSTALLED, candidate=strict, now=NOW)
    assert result.stopped() == ["a-idle"]
    verdicts = {c.name: c for c in result.containers}
    assert verdicts["b-warm"].action == "warn" and verdicts["b-warm"].reason == "idle"
    assert verdicts["b-busy"].action == "none"
    assert verdicts["b-busy"].idle_moves_by == -600.0  # 30m -> 20m


def test_an_extension_is_kept_under_the_candidate():
    extended = _running("a-long", "ann", idle_for=60, ran_for=20 * 3600, ext=4 * 3600)
    shorter = _candidate(
        groups={
            "student": {"max_gpus": 2, "max_runtime": "21h"},
            "researcher": {"max_gpus": 4},
        },
        default_group="student",
    )
    result = what_if([extended], {}, installed=INSTALLED, candidate=shorter, now=NOW)
    verdict = result.containers[0]
    # 21h + 4h extension: 5h left, not stopped; the deadline moves 3h earlier.
    assert verdict.action == "none" and verdict.runtime_moves_by == -3 * 3600


def test_protected_users_and_exemptions_are_never_stopped():
    cat = _running("c-idle", "cat", idle_for=5 * 3600, ran_for=6 * 3600)
    result = what_if([cat], {}, installed=INSTALLED, candidate=_candidate(), now=NOW)
    assert result.containers[0].protected and result.stopped() == []
    exempt = _candidate(exemptions=[{"user": "ann", "from": ["idle"], "reason": "thesis"}])
    ann = _running("a-idle", "ann", idle_for=3 * 3600, ran_for=4 * 3600)
    verdict = what_if([ann], {}, installed=INSTALLED, candidate=exempt, now=NOW).containers[0]
    assert verdict.action == "none" and math.isinf(verdict.idle_deadline)


def test_over_quota_holders_are_named_with_their_numbers():
    tight = _candidate(
        groups={"student": {"max_gpus": 1}, "researcher": {"max_gpus": 4}}, default_group="student"
    )
    result = what_if(
        [], {"ann": 2, "ben": 1, "cat": 3}, installed=INSTALLED, candidate=tight, now=NOW
    )
    assert [(q.user, q.holding, q.max_gpus) for q in result.over_quota] == [("ann", 2, 1)]
    assert "ann (student): holds 2 of 1" in render_text(result)
    assert to_json(result)["over_quota"] == [
        {"user": "ann", "group": "student", "holding": 2, "max_gpus": 1}
    ]


def test_facts_are_read_per_container_and_holdings_per_user():
    cid = "c" * 64
    labels = {"container_id": cid, "container": "job", "user": "ann", "type": "ds01"}

    def s(name, value, **extra):
        return Sample({"__name__": name, **labels, **extra}, value, NOW)

    samples = (
        s("ds01_container_info", 1),
        s("ds01_container_start_time_seconds", 10),
        s("ds01_container_last_busy_timestamp_seconds", 20),
        s("ds01_container_keep_alive", 1),
        s("ds01_container_idle_deadline_timestamp_seconds", math.inf),
        s("ds01_container_runtime_deadline_timestamp_seconds", 99),
        Sample({"__name__": "ds01_container_info", "container_id": "d" * 64}, 1, NOW),
    )
    (only,) = containers_from(samples)  # the second lacks its facts: judged next time
    assert (only.name, only.keep_alive, only.runtime_deadline) == ("job", True, 99)
    held = (
        Sample({"user": "ann", "device_uuid": "MIG-1"}, 1, NOW),
        Sample({"user": "ann", "device_uuid": "MIG-2"}, 1, NOW),
        Sample({"user": "ben", "device_uuid": "MIG-3"}, 1, NOW),
    )
    assert holdings_from(held) == {"ann": 2, "ben": 1}


def test_check_config_what_if_refuses_a_bad_candidate_and_an_unreachable_prometheus(
    tmp_path, capsys
):
    from ds01.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("idle_timeout: soon\n")
    good = tmp_path / "good.yaml"
    good.write_text("idle_timeout: 20m\n")
    assert main(["check-config", "--what-if", str(bad), "--installed", str(good)]) == 1
    assert "idle_timeout" in capsys.readouterr().err
    code = main(
        [
            "check-config",
            "--what-if",
            str(good),
            "--installed",
            str(good),
            "--prometheus-url",
            "http://127.0.0.1:9",
        ]
    )
    assert code == 2
    assert "cannot query Prometheus at http://127.0.0.1:9" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["check-config", "--what-if"])
