"""Owners' mail: the generated per-user routes, through a real Alertmanager, into a real SMTP
sink; the enforcer (a recorder here) still gets every alert."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import requests
import yaml

from ds01.notify_policy import EmailNotifications
from ds01.policy import PolicyError, parse_policy
from ds01.promconfig import AlertmanagerSettings, render_alertmanager_config
from tests.harness.waiting import eventually

pytestmark = pytest.mark.integration


def alert(user: str, container: str, *, action: str = "notify", severity: str = "warning"):
    now = datetime.now(UTC)
    labels = {
        "alertname": "GPUContainerIdleWarning" if action == "notify" else "GPUContainerIdle",
        "severity": severity,
        "action": action,
        "reason": "idle",
        "container_id": (container.encode().hex() * 8)[:64],
        "container": container,
        "group": "student",
        "type": "docker",
    }
    if user:
        labels["user"] = user
    return {
        "labels": labels,
        "annotations": {"summary": f"GPU container {container} of {user} has an idle GPU"},
        "startsAt": now.isoformat(),
        "endsAt": (now + timedelta(hours=1)).isoformat(),
    }


def email_settings(recorder, tmp_path, sink) -> AlertmanagerSettings:
    token = tmp_path / "token"
    token.write_text("t\n")
    return AlertmanagerSettings(
        enforcer_url=recorder.url,
        token_file=str(token),
        group_wait=0,
        group_interval=1,
        email=EmailNotifications(
            sender="ds01@example.org",
            smarthost=sink.smarthost,
            to_template="{{ user }}@example.org",
            addresses={"ds01bob": "bob@uni.example.edu"},
            require_tls=False,
        ),
    )


def test_warnings_and_stops_are_mailed_to_their_owner_and_still_reach_the_enforcer(
    tmp_path, recorder, smtp_sink, alertmanager_factory
):
    am = alertmanager_factory(
        render_alertmanager_config(email_settings(recorder, tmp_path, smtp_sink))
    )
    posted = [
        alert("ds01alice", "alice-job"),
        alert("ds01bob", "bob-job", action="stop", severity="critical"),
        alert("", "nobodys-job"),  # no owner: no mail, but the enforcer still hears of it
    ]
    requests.post(
        f"{am.url}/api/v2/alerts", json=posted, timeout=5, auth=am.auth
    ).raise_for_status()

    [alice] = eventually(
        lambda: smtp_sink.mails("ds01alice@example.org"), 30, "alice's mail (template address)"
    )
    assert alice.sender == "ds01@example.org"
    assert alice.subject == "[ds01] warning: GPU container alice-job (idle)"
    assert "alice-job of ds01alice has an idle GPU" in alice.text
    assert "container history" in alice.text
    [bob] = eventually(lambda: smtp_sink.mails("bob@uni.example.edu"), 30, "bob's mapped mail")
    assert bob.subject == "[ds01] critical: GPU container bob-job (idle)"
    eventually(
        lambda: len(recorder.posts("/notify")) >= 2 and recorder.posts("/alerts"),
        30,
        "the enforcer's deliveries",
    )
    # bob is mapped: his template address gets nothing; nobody else got mail
    assert {r for m in smtp_sink.mails() for r in m.recipients} == {
        "ds01alice@example.org",
        "bob@uni.example.edu",
    }


def test_the_email_policy_renders_routes_amtool_accepts(tmp_path, amtool):
    import subprocess

    policy = parse_policy(
        {
            "notifications": {
                "email": {
                    "to": "{{ user }}@example.org",
                    "addresses": {"carol": "carol@example.net"},
                    "from": "ds01@example.org",
                    "smarthost": "smtp.example.org:587",
                }
            }
        }
    )
    text = render_alertmanager_config(AlertmanagerSettings.from_policy(policy))
    path = tmp_path / "alertmanager.yml"
    path.write_text(text)
    check = subprocess.run([amtool, "check-config", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    config = yaml.safe_load(text)
    first = config["route"]["routes"][0]
    assert first["continue"] is True and first["receiver"] == "ds01-owner-email"
    assert first["routes"] == [{"receiver": "ds01-owner-email-carol", "matchers": ['user="carol"']}]
    receivers = {r["name"]: r for r in config["receivers"]}
    assert receivers["ds01-owner-email"]["email_configs"][0]["to"] == (
        "{{ .CommonLabels.user }}@example.org"
    )
    assert receivers["ds01-owner-email"]["email_configs"][0]["require_tls"] is True
    # no email section: no email route at all (the checked-in default stays as it was)
    plain = yaml.safe_load(render_alertmanager_config(AlertmanagerSettings()))
    assert all("email" not in r["receiver"] for r in plain["route"]["routes"])


@pytest.mark.parametrize(
    ("email", "message"),
    [
        ({"to": "{{ user }}@example.org", "from": "x@example.org"}, "smarthost"),
        ({"to": "someone@example.org", "from": "x@e.org", "smarthost": "h:25"}, "exactly once"),
        ({"to": "{{ user }}@{{ user }}.org", "from": "x@e.org", "smarthost": "h:25"}, "once"),
        ({"to": "{{ .Labels }}{{ user }}@e.org", "from": "x@e.org", "smarthost": "h:25"}, "other"),
        ({"from": "x@e.org", "smarthost": "h:25"}, "give `to`"),
        ({"addresses": {"a": "not-mail"}, "from": "x@e.org", "smarthost": "h:25"}, "addresses.a"),
        ({"addresses": {'a"b': "a@e.org"}, "from": "x@e.org", "smarthost": "h:25"}, "user name"),
        ({"to": "{{ user }}@e.org", "from": "x@e.org", "smarthost": "h"}, "HOST:PORT"),
        ({"to": "{{ user }}@e.org", "from": "x@e.org", "smarthost": "h:2", "tls": 1}, "unknown"),
    ],
)
def test_a_bad_email_section_is_refused_naming_the_key(email, message):
    with pytest.raises(PolicyError, match=message) as info:
        parse_policy({"notifications": {"email": email}}, "ds01.yaml")
    assert str(info.value).startswith("ds01.yaml: notifications.email")


def test_channel_switches_and_utmp_path_are_validated():
    policy = parse_policy({"notifications": {"terminal": False, "utmp_path": "/tmp/utmp"}})
    assert policy.notifications.terminal is False and policy.notifications.container_file
    assert policy.notifications.utmp_path == "/tmp/utmp"
    with pytest.raises(PolicyError, match="notifications.terminal: must be true or false"):
        parse_policy({"notifications": {"terminal": "yes"}})
    with pytest.raises(PolicyError, match="notifications.utmp_path: must be an absolute"):
        parse_policy({"notifications": {"utmp_path": "utmp"}})


def test_check_config_says_which_channels_tell_owners():
    from ds01.notify_policy import notification_channels

    email = {"to": "{{ user }}@e.org", "addresses": {"a": "a@e.org"}, "from": "x@e.org",
             "smarthost": "h:25"}  # fmt: skip
    policy = parse_policy({"notifications": {"container_file": False, "email": email}})
    assert notification_channels(policy.notifications) == (
        "their terminals (utmp /var/run/utmp), mail to {{ user }}@e.org, 1 mapped via h:25"
    )
    off = parse_policy({"notifications": {"terminal": False, "container_file": False}})
    assert notification_channels(off.notifications) == "nothing (every channel is off)"
