"""The enforcer against a real dockerd and a real Prometheus: what operators and users rely on."""

from __future__ import annotations

import sqlite3
import time

import pytest

from tests.enforcer.conftest import GPU, TOKEN, WAIT, alert_for, make_policy, webhook
from tests.harness.waiting import eventually

pytestmark = pytest.mark.integration


def test_firing_stop_alert_stops_an_idle_gpu_container_and_audits_once(
    enforcer_factory, containers, deadlines
):
    enforcer = enforcer_factory()
    box = containers(gpus=[GPU])
    deadlines.past_idle(box)

    reply = enforcer.post("alerts", webhook(alert_for(box)))

    assert reply.status_code == 200
    assert reply.json()["accepted"] == 1
    [record] = enforcer.wait_records(box.id)
    box.reload()
    assert box.status == "exited"
    assert record["event"] == "stop"
    assert record["decision"] == "stopped"
    assert record["container"] == box.name
    assert record["reason"] == "idle"
    assert record["dry_run"] is False
    for key in ("time", "user", "fingerprint", "detail"):
        assert key in record
    assert enforcer.metric("ds01_enforcer_actions_total", action="stop", result="stopped") == 1


def test_same_alert_delivered_five_times_stops_once(enforcer_factory, containers, deadlines):
    """Repeats are duplicates while the first is open (pending, then watched after the stop).
    A repeat after a skip is verified again: under load a failed scrape can make the first
    decision `no current … series`; the container is still stopped exactly once."""
    enforcer = enforcer_factory()
    box = containers(gpus=[GPU])
    deadlines.past_idle(box)
    alert = alert_for(box, fingerprint="f00dfeed00000001")

    replies = [enforcer.post("alerts", webhook(alert)) for _ in range(5)]

    assert [r.status_code for r in replies] == [200] * 5
    accepted = sum(r.json()["accepted"] for r in replies)
    assert accepted >= 1
    duplicates = enforcer.metric(
        "ds01_enforcer_alerts_total", endpoint="alerts", status="duplicate"
    )
    assert duplicates == 5 - accepted
    eventually(
        lambda: [r for r in enforcer.records_for(box.id) if r["decision"] == "stopped"],
        WAIT,
        "the stop",
    )
    time.sleep(0.5)  # give a wrongly queued repeat the chance to show up
    records = enforcer.records_for(box.id)
    assert [r["decision"] for r in records].count("stopped") == 1
    assert all(r["decision"].startswith("skipped: ") for r in records[:-1])  # before the stop
    assert len(records) == accepted


def test_resolved_alert_does_nothing(enforcer_factory, containers, deadlines):
    enforcer = enforcer_factory()
    box = containers(gpus=[GPU])
    deadlines.past_idle(box)

    reply = enforcer.post("alerts", webhook(alert_for(box, status="resolved"), status="resolved"))

    assert reply.status_code == 200
    assert reply.json()["accepted"] == 0
    assert reply.json()["resolved_skipped"] == 1
    assert enforcer.journaled(box.id) == []  # journaled before the reply: nothing will happen
    box.reload()
    assert box.status == "running"
    assert enforcer.records_for(box.id) == []


def test_firing_and_resolved_in_one_group_are_judged_one_by_one(
    enforcer_factory, containers, deadlines
):
    enforcer = enforcer_factory()
    firing, resolved = containers(gpus=[GPU]), containers(gpus=[GPU])
    deadlines.past_idle(firing)
    deadlines.past_idle(resolved)

    body = webhook(alert_for(firing), alert_for(resolved, status="resolved"), status="resolved")
    assert enforcer.post("alerts", body).status_code == 200

    enforcer.wait_records(firing.id)
    resolved.reload()
    assert resolved.status == "running"
    assert enforcer.records_for(resolved.id) == []


def test_idle_container_restarted_since_the_last_scrape_is_skipped(
    enforcer_factory, containers, deadlines
):
    enforcer = enforcer_factory()
    box = containers(gpus=[GPU])
    now = time.time()  # the idle sample was measured before the restart (an exporter lagging)
    deadlines.publish(box, idle=now - 120, runtime=now + 86400, measured_at=now)
    time.sleep(0.05)
    box.restart(timeout=0)

    enforcer.post("alerts", webhook(alert_for(box)))

    [record] = enforcer.wait_records(box.id)
    assert record["decision"] == (
        "skipped: restarted since its idle clock was last measured (a start is busy time)"
    )
    box.reload()
    assert box.status == "running"


def test_protected_name_is_skipped(enforcer_factory, containers, deadlines):
    policy = make_policy(protected={"names": ["ds01-prometheus-test"]})
    enforcer = enforcer_factory(policy=policy)
    box = containers(name="ds01-prometheus-test", gpus=[GPU])
    deadlines.past_idle(box)

    enforcer.post("alerts", webhook(alert_for(box)))

    [record] = enforcer.wait_records(box.id)
    assert record["decision"] == (
        "skipped: protected by policy (name ds01-prometheus-test, made by root)"
    )
    box.reload()
    assert box.status == "running"


def test_exempt_user_is_skipped(enforcer_factory, containers, deadlines):
    policy = make_policy(
        exemptions=[{"user": "carol", "from": ["idle"], "until": "2999-01-01", "reason": "thesis"}]
    )
    enforcer = enforcer_factory(policy=policy)
    box = containers(gpus=[GPU], labels={"ds01.user": "carol"})
    deadlines.past_idle(box)

    enforcer.post("alerts", webhook(alert_for(box)))

    [record] = enforcer.wait_records(box.id)
    assert record["decision"] == "skipped: exempt from idle by policy (thesis)"
    assert record["user"] == "carol"


def test_non_gpu_container_is_skipped(enforcer_factory, containers, deadlines):
    enforcer = enforcer_factory()
    box = containers()
    deadlines.past_idle(box)

    enforcer.post("alerts", webhook(alert_for(box)))

    [record] = enforcer.wait_records(box.id)
    assert record["decision"] == "skipped: no GPU access"
    box.reload()
    assert box.status == "running"


def test_deadline_not_yet_passed_by_current_data_is_skipped(
    enforcer_factory, containers, deadlines
):
    enforcer = enforcer_factory()
    box = containers(gpus=[GPU])
    deadlines.publish(box, idle=time.time() + 3600)  # busy again since the alert fired

    enforcer.post("alerts", webhook(alert_for(box)))

    [record] = enforcer.wait_records(box.id)
    assert record["decision"].startswith("skipped: not past its idle deadline")
    box.reload()
    assert box.status == "running"


def test_keep_alive_infinite_deadline_is_skipped(enforcer_factory, containers, deadlines):
    enforcer = enforcer_factory()
    box = containers(gpus=[GPU])
    deadlines.publish(box, idle=float("inf"))

    enforcer.post("alerts", webhook(alert_for(box)))

    [record] = enforcer.wait_records(box.id)
    assert record["decision"] == "skipped: idle deadline is not set (keep-alive or exemption)"


def test_max_runtime_stop_uses_the_runtime_deadline(enforcer_factory, containers, deadlines):
    enforcer = enforcer_factory()
    box = containers(gpus=[GPU])
    deadlines.publish(box, idle=time.time() + 3600, runtime=time.time() - 5)

    enforcer.post("alerts", webhook(alert_for(box, reason="max_runtime")))

    [record] = enforcer.wait_records(box.id)
    assert record["decision"] == "stopped"
    assert record["detail"].startswith("past its runtime deadline")


def test_unmanaged_stop_needs_the_join_to_confirm(enforcer_factory, containers, deadlines):
    enforcer = enforcer_factory()
    rogue, managed = containers(gpus=[GPU]), containers(gpus=[GPU])
    deadlines.publish(rogue, devices=(GPU,))
    deadlines.publish(managed, devices=(GPU,), bound=(GPU,))

    body = webhook(alert_for(rogue, reason="unmanaged"), alert_for(managed, reason="unmanaged"))
    enforcer.post("alerts", body)

    assert enforcer.wait_records(rogue.id)[0]["decision"] == "stopped"
    [kept] = enforcer.wait_records(managed.id)
    assert kept["decision"] == "skipped: no longer unmanaged (a bound allocation holds its devices)"
    managed.reload()
    assert managed.status == "running"


def test_wrong_or_missing_token_is_401_and_nothing_happens(enforcer_factory, containers, deadlines):
    enforcer = enforcer_factory()
    box = containers(gpus=[GPU])
    deadlines.past_idle(box)
    body = webhook(alert_for(box))

    wrong = enforcer.post("alerts", body, token="guess")
    missing = enforcer.post("alerts", body, token=None)

    for reply in (wrong, missing):
        assert reply.status_code == 401
        assert reply.json() == {"error": "unauthorized"}
    assert enforcer.journaled(box.id) == []
    box.reload()
    assert box.status == "running"
    assert enforcer.audit() == []
    assert enforcer.metric("ds01_enforcer_queue_depth") == 0
    assert enforcer.metric("ds01_enforcer_requests_total", endpoint="alerts", code="401") == 2


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "body is not valid JSON"),
        (b"[]", "body must be a JSON object"),
        (b'{"alerts": 3}', "alerts: must be a list"),
    ],
)
def test_malformed_body_is_400(enforcer_factory, body, message):
    enforcer = enforcer_factory()

    reply = enforcer.post("alerts", body)

    assert reply.status_code == 400
    assert message in reply.json()["error"]


def test_missing_required_label_is_400_and_nothing_in_the_webhook_is_done(
    enforcer_factory, containers, deadlines
):
    enforcer = enforcer_factory()
    good, bad = containers(gpus=[GPU]), containers(gpus=[GPU])
    deadlines.past_idle(good)
    broken = alert_for(bad)
    del broken["labels"]["reason"]

    reply = enforcer.post("alerts", webhook(alert_for(good), broken))

    assert reply.status_code == 400
    assert reply.json()["error"] == "alerts[1].labels.reason: required label is missing"
    assert enforcer.journaled(good.id) == []
    good.reload()
    assert good.status == "running"
    assert enforcer.audit() == []


def test_oversized_body_is_413(enforcer_factory):
    enforcer = enforcer_factory(max_body=1024)

    reply = enforcer.post("alerts", webhook() | {"padding": "x" * 2048})

    assert reply.status_code == 413


def test_dry_run_decides_but_does_not_stop(enforcer_factory, containers, deadlines):
    enforcer = enforcer_factory(dry_run=True)
    box = containers(gpus=[GPU])
    deadlines.past_idle(box)

    enforcer.post("alerts", webhook(alert_for(box)))

    [record] = enforcer.wait_records(box.id)
    assert record["decision"] == "dry-run: would stop"
    assert record["dry_run"] is True
    box.reload()
    assert box.status == "running"


def test_dry_run_touches_no_container_and_audits_what_it_would_do(
    enforcer_factory, containers, deadlines
):
    enforcer = enforcer_factory(dry_run=True)
    box = containers(gpus=[GPU])
    deadlines.past_idle(box)

    enforcer.post("notify", webhook(alert_for(box, action="notify", summary="idle, stop in 10m")))
    enforcer.post("alerts", webhook(alert_for(box)))

    records = enforcer.wait_records(box.id, 2)
    assert sorted(r["decision"] for r in records) == [
        "dry-run: would notify",
        "dry-run: would stop",
    ]
    assert all(r["dry_run"] for r in records)
    code, output = box.exec_run(["cat", "/workspace/.ds01-alerts"])
    assert code != 0, f"dry-run wrote a notice: {output!r}"
    assert enforcer.metric("ds01_enforcer_actions_total", action="notify", result="dry_run") == 1


def test_an_idle_stop_that_arrives_unwarned_warns_first_and_stops_after_idle_warning(
    enforcer_factory, containers, deadlines
):
    # As after a restart of Prometheus or Alertmanager: the stop alert comes with no warning.
    enforcer = enforcer_factory(policy=make_policy(idle_warning="2s"))
    box = containers(gpus=[GPU])
    deadlines.past_idle(box)

    enforcer.post("alerts", webhook(alert_for(box)))

    deferred, stopped = eventually(
        lambda: len(r := enforcer.records_for(box.id, deferred=True)) >= 2 and r,
        WAIT,
        "a deferral, then the stop",
    )
    assert deferred["decision"].startswith("deferred: not warned yet")
    assert "warning notified" in deferred["decision"]
    assert stopped["decision"] == "stopped"
    not_before = float(deferred["detail"].removeprefix("stop not before "))
    assert not_before - _epoch(deferred["time"]) >= 2.0 - 0.5  # the warning period, from now
    assert _epoch(stopped["time"]) >= not_before
    box.start()
    _, output = box.exec_run(["cat", "/workspace/.ds01-alerts"])
    lines = output.decode().splitlines()
    assert "ds01 WARNING:" in lines[0] and "will be stopped at" in lines[0]
    assert "stopping this container now" in lines[1]


def test_a_warning_delivered_by_alertmanager_lets_the_idle_stop_go_ahead_after_its_period(
    enforcer_factory, containers, deadlines
):
    enforcer = enforcer_factory(policy=make_policy(idle_warning="1s"))
    box = containers(gpus=[GPU])
    deadlines.past_idle(box)
    enforcer.post("notify", webhook(alert_for(box, action="notify", summary="idle")))
    [notified] = enforcer.wait_records(box.id)
    assert notified["decision"] == "notified"

    enforcer.post("alerts", webhook(alert_for(box)))

    records = enforcer.wait_records(box.id, 2)
    assert records[1]["decision"] == "stopped"
    assert _epoch(records[1]["time"]) - _epoch(notified["time"]) >= 1.0
    assert not any(
        "not warned yet" in r["decision"] for r in enforcer.records_for(box.id, deferred=True)
    )


def _epoch(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def test_warning_appends_the_notice_file_readable_in_the_container(
    enforcer_factory, containers, deadlines
):
    enforcer = enforcer_factory()
    box = containers(gpus=[GPU])
    first = alert_for(box, action="notify", summary="GPU idle for 20m; stop in 10m")
    again = alert_for(box, action="notify", summary="second warning")

    assert enforcer.post("notify", webhook(first)).status_code == 200
    enforcer.wait_records(box.id)
    assert enforcer.post("notify", webhook(first)).status_code == 200  # a repeat: no new line
    assert enforcer.post("notify", webhook(again)).status_code == 200
    records = enforcer.wait_records(box.id, 2)

    assert [r["decision"] for r in records] == ["notified", "notified"]
    code, output = box.exec_run(["cat", "/workspace/.ds01-alerts"])
    assert code == 0
    lines = output.decode().splitlines()
    assert len(lines) == 2
    assert lines[0].endswith("ds01 WARNING: GPU idle for 20m; stop in 10m")
    assert lines[1].endswith("ds01 WARNING: second warning")
    box.reload()
    assert box.status == "running"


def test_stop_leaves_a_notice_for_the_owner(enforcer_factory, containers, deadlines):
    enforcer = enforcer_factory()
    box = containers(gpus=[GPU])
    deadlines.past_idle(box)

    enforcer.post("alerts", webhook(alert_for(box)))

    [record] = enforcer.wait_records(box.id)
    assert "notice written" in record["detail"]
    box.start()
    code, output = box.exec_run(["cat", "/workspace/.ds01-alerts"])
    assert "stopping this container now because its GPU has been idle" in output.decode()


def test_ds01_native_container_is_removed_after_the_hold(enforcer_factory, containers, deadlines):
    enforcer = enforcer_factory(policy=make_policy(container_hold_after_stop="1s"))
    labels = {"ds01.managed": "true", "ds01.user": "alice", "ds01.type": "ds01"}
    box = containers(gpus=[GPU], labels=labels)
    deadlines.past_idle(box)

    enforcer.post("alerts", webhook(alert_for(box)))

    stopped, removed = enforcer.wait_records(box.id, 2)
    assert stopped["decision"] == "stopped"
    assert removed["event"] == "remove"
    assert removed["decision"] == "removed"
    assert box.id not in {c.id for c in box.client.containers.list(all=True)}


@pytest.mark.parametrize(
    "labels",
    [
        {"ds01.type": "docker"},  # the wrapper's plain `docker run`
        {"ds01.type": "devcontainer", "devcontainer.local_folder": "/home/alice/x"},
        {"ds01.type": "compose", "com.docker.compose.project": "exp"},
    ],
)
def test_a_container_allocated_by_us_but_not_deployed_is_kept_after_the_stop(
    enforcer_factory, containers, deadlines, labels
):
    enforcer = enforcer_factory(policy=make_policy(container_hold_after_stop="0s"))
    box = containers(gpus=[GPU], labels={"ds01.managed": "true", "ds01.user": "alice", **labels})
    deadlines.past_idle(box)

    enforcer.post("alerts", webhook(alert_for(box)))

    # A removal is journaled before the stop's own row is marked done: once that row is done,
    # every follow-up that will ever exist is in the journal.
    jobs = enforcer.wait_done(box.id)
    assert [(j["kind"], j["decision"]) for j in jobs] == [("stop", "stopped")]
    assert [r["event"] for r in enforcer.records_for(box.id)] == ["stop"]
    box.reload()
    assert box.status == "exited"


def test_docker_unreachable_is_503_and_the_alert_runs_once_docker_is_back(
    enforcer_factory, containers, deadlines, dockerd, short_tmp
):
    socket_path = short_tmp / "docker.sock"  # absent: Docker is down
    enforcer = enforcer_factory(docker_host=f"unix://{socket_path}")
    box = containers(gpus=[GPU])
    deadlines.past_idle(box)
    body = webhook(alert_for(box))

    first = enforcer.post("alerts", body)
    retry = enforcer.post("alerts", body)  # Alertmanager retries after a 5xx

    assert first.status_code == 503
    assert first.json()["accepted"] == 1
    assert "docker" in first.json()["error"]
    assert retry.status_code == 503
    assert retry.json()["duplicates"] == 1
    eventually(
        lambda: enforcer.metric("ds01_enforcer_dependency_errors_total", dependency="docker") >= 2,
        WAIT,
        "the worker to retry",
    )
    assert enforcer.audit() == []
    assert enforcer.metric("ds01_enforcer_queue_depth") == 1

    socket_path.symlink_to(dockerd.socket_path)  # Docker is back

    [record] = enforcer.wait_records(box.id)
    assert record["decision"] == "stopped"
    box.reload()
    assert box.status == "exited"
    again = enforcer.post("alerts", body)
    assert again.status_code == 200 and again.json()["duplicates"] == 1
    assert len(enforcer.journaled(box.id)) == 1  # the repeat was not journaled: no second stop
    assert len(enforcer.records_for(box.id)) == 1


def test_a_journal_that_cannot_be_written_keeps_the_job_and_the_worker_alive(
    enforcer_factory, containers, deadlines
):
    enforcer = enforcer_factory(action_delay=1.0)  # time to lock the journal after the ack
    box = containers(gpus=[GPU])
    deadlines.past_idle(box)
    assert enforcer.post("alerts", webhook(alert_for(box))).status_code == 200
    locker = sqlite3.connect(str(enforcer.service.config.journal_path), isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")  # another writer holds the journal: writes fail (locked)
    try:
        eventually(
            lambda: (
                enforcer.metric("ds01_enforcer_dependency_errors_total", dependency="journal") >= 1
            ),
            WAIT,
            "the journal failure to be counted",
        )
        assert [j["state"] for j in enforcer.journaled(box.id)] == ["pending"]
    finally:
        locker.execute("ROLLBACK")
        locker.close()

    [job] = enforcer.wait_done(box.id)  # the same worker threads go on once it can write
    assert job["decision"] == "stopped"
    assert [r["decision"] for r in enforcer.records_for(box.id)] == ["stopped"]
    box.reload()
    assert box.status == "exited"


def test_metrics_page_has_the_contract_series(enforcer_factory):
    enforcer = enforcer_factory()

    assert enforcer.metric("ds01_enforcer_queue_depth") == 0
    assert enforcer.metric("ds01_enforcer_oldest_pending_age_seconds") == 0
    assert enforcer.metric("ds01_enforcer_action_latency_seconds_count") == 0
    assert enforcer.metric("ds01_enforcer_alerts_total", endpoint="notify", status="accepted") == 0
    assert enforcer.metric("ds01_enforcer_actions_total", action="stop", result="failed") == 0


def test_healthz_answers_without_a_token(enforcer_factory):
    import requests

    enforcer = enforcer_factory()

    reply = requests.get(f"{enforcer.url}/healthz", timeout=5)

    assert reply.status_code == 200
    assert reply.json()["status"] == "ok"
    assert TOKEN not in reply.text


def test_prometheus_unreachable_is_503_and_nothing_is_done(enforcer_factory, containers, deadlines):
    from ds01.stack import free_port

    enforcer = enforcer_factory(prometheus_url=f"http://127.0.0.1:{free_port()}")
    box = containers(gpus=[GPU])
    deadlines.past_idle(box)

    reply = enforcer.post("alerts", webhook(alert_for(box)))

    assert reply.status_code == 503
    assert "prometheus unreachable" in reply.json()["error"]
    eventually(
        lambda: enforcer.metric("ds01_enforcer_dependency_errors_total", dependency="prometheus"),
        WAIT,
        "a failed re-verification",
    )
    box.reload()
    assert box.status == "running"
    assert enforcer.audit() == []
    assert enforcer.metric("ds01_enforcer_queue_depth") == 1


def test_a_notice_that_cannot_be_written_is_recorded_as_failed(enforcer_factory, containers):
    enforcer = enforcer_factory(notice_path="/no/such/folder/.ds01-alerts")
    box = containers(gpus=[GPU])

    enforcer.post("notify", webhook(alert_for(box, action="notify")))

    [record] = enforcer.wait_records(box.id)
    assert record["decision"] == "failed: notice not written"
    assert record["detail"].startswith(
        "notice not written (/no/such/folder does not exist in the container)"
    )
    assert (
        enforcer.metric(
            "ds01_enforcer_notifications_total", channel="container_file", result="failed"
        )
        == 1
    )
    assert enforcer.metric("ds01_enforcer_actions_total", action="notify", result="failed") == 1


def test_an_alert_on_the_wrong_endpoint_is_ignored(enforcer_factory, containers, deadlines):
    enforcer = enforcer_factory()
    box = containers(gpus=[GPU])
    deadlines.past_idle(box)

    reply = enforcer.post("notify", webhook(alert_for(box, action="stop")))

    assert reply.status_code == 200
    assert reply.json()["ignored"] == 1
    assert enforcer.journaled(box.id) == []
    box.reload()
    assert box.status == "running"
    assert enforcer.audit() == []


def test_deeply_nested_json_is_a_400(enforcer_factory):
    enforcer = enforcer_factory()

    reply = enforcer.post("alerts", b"[" * 100_000)

    assert reply.status_code == 400
    assert reply.json() == {"error": "JSON nested deeper than 64 levels"}


def test_a_burst_of_concurrent_webhooks_loses_nothing_and_decides_each_alert_once(
    enforcer_factory, containers, deadlines
):
    """Many webhooks at once, with repeats across them, while the workers already act."""
    from collections import Counter
    from concurrent.futures import ThreadPoolExecutor

    enforcer = enforcer_factory(threads=4)
    boxes = [containers(gpus=[GPU]) for _ in range(3)]
    for box in boxes:
        deadlines.past_idle(box)
    starts_at = time.time()  # after the containers started
    alerts = [
        alert_for(boxes[n % 3], fingerprint=f"burst{n:011d}", starts_at=starts_at)
        for n in range(60)
    ]
    posts = [[alerts[(j * 7 + k) % 60] for k in range(5)] for j in range(40)]
    posts.append(alerts)  # and every alert once more, in one big webhook

    with ThreadPoolExecutor(max_workers=len(posts)) as pool:
        replies = list(pool.map(lambda batch: enforcer.post("alerts", webhook(*batch)), posts))

    assert [r.status_code for r in replies] == [200] * len(posts)
    assert sum(r.json()["accepted"] for r in replies) == len(alerts)  # each journaled once

    def decisions() -> list[dict]:  # a stop deferred for its warning is not a decision
        return [r for r in enforcer.audit() if not r["decision"].startswith("deferred:")]

    eventually(lambda: len(decisions()) >= len(alerts), WAIT, "every alert decided")
    enforcer.service.worker.wake()
    eventually(lambda: enforcer.metric("ds01_enforcer_queue_depth") == 0, WAIT, "an empty queue")
    records = decisions()
    decided = Counter(r["fingerprint"] for r in records)
    assert set(decided) == {a["fingerprint"] for a in alerts}  # nothing lost
    assert max(decided.values()) == 1  # nothing decided twice
    stops = Counter(r["container_id"] for r in records if r["decision"] == "stopped")
    assert stops == Counter({box.id: 1 for box in boxes})  # each stopped exactly once
