"""The worker against a real dockerd and Prometheus: restarts and faults never end enforcement."""

from __future__ import annotations

import os
import time

import pytest
import requests

from tests.enforcer.conftest import GPU, WAIT, alert_for, webhook
from tests.enforcer.series import prometheus_has
from tests.harness.waiting import eventually

pytestmark = pytest.mark.integration

FULL_DISK_SECONDS = float(os.environ.get("DS01_TEST_FULL_DISK_SECONDS", "5"))


def _stopped_records(enforcer, container_id: str) -> list[dict]:
    return [r for r in enforcer.records_for(container_id) if r["decision"] == "stopped"]


def test_a_quick_restart_past_its_runtime_is_stopped_again_without_a_new_alert(
    enforcer_factory, containers, deadlines
):
    enforcer = enforcer_factory(watch_interval=0.3)
    box = containers(gpus=[GPU])
    deadlines.publish(box, idle=time.time() + 3600, runtime=time.time() - 5)
    assert enforcer.post("alerts", webhook(alert_for(box, reason="max_runtime"))).ok
    eventually(lambda: _stopped_records(enforcer, box.id), WAIT, "the first stop")

    box.start()  # before any scrape could notice: the alert keeps firing, nothing is re-sent

    eventually(lambda: len(_stopped_records(enforcer, box.id)) == 2, WAIT, "a second stop")
    box.reload()
    assert box.status == "exited"


def test_a_repeat_of_the_same_alert_after_a_restart_is_verified_again(
    enforcer_factory, containers, deadlines
):
    """Alertmanager's resend carries the first startsAt: once decided, it is no duplicate."""
    enforcer = enforcer_factory(watch_interval=0.3)
    box = containers(gpus=[GPU])
    deadlines.publish(box, devices=(GPU,))  # unmanaged: no bound allocation
    alert = alert_for(box, reason="unmanaged", fingerprint="0123456789abcdef")
    enforcer.post("alerts", webhook(alert))
    eventually(lambda: _stopped_records(enforcer, box.id), WAIT, "the first stop")
    deadlines.series.drop(box.id)  # the exporter no longer reports the stopped container
    journal = enforcer.service.journal
    eventually(
        lambda: [r["state"] for r in journal.decisions()] == ["done"], WAIT, "the watch to end"
    )
    box.start()  # a later start: the exporter reports it again, the alert is resent as it was
    deadlines.publish(box, devices=(GPU,))

    reply = enforcer.post("alerts", webhook(alert))

    assert reply.json()["accepted"] == 1
    eventually(lambda: len(_stopped_records(enforcer, box.id)) == 2, WAIT, "a second stop")
    box.reload()
    assert box.status == "exited"


def test_an_early_skip_never_blocks_the_real_alert(enforcer_factory, containers, deadlines):
    """An alert injected with the container's labels and an early startsAt is decided as
    'not past its deadline'; Alertmanager then resends the real one under that startsAt."""
    enforcer = enforcer_factory()
    box = containers(gpus=[GPU])
    deadlines.publish(box, idle=time.time() + 3600, runtime=time.time() + 86400)
    injected = alert_for(box, starts_at=0.0, fingerprint="feedfacefeedface")
    enforcer.post("alerts", webhook(injected))
    [early] = enforcer.wait_records(box.id)
    assert early["decision"].startswith("skipped: not past its idle deadline")

    deadlines.past_idle(box)
    past = f'ds01_container_idle_deadline_timestamp_seconds{{container_id="{box.id}"}} < time()'
    eventually(lambda: prometheus_has(deadlines.prometheus.url, past), WAIT, "a past deadline")
    reply = enforcer.post("alerts", webhook(injected))

    assert reply.json()["accepted"] == 1
    [_, real] = enforcer.wait_records(box.id, 2)
    assert real["decision"] == "stopped"
    box.reload()
    assert box.status == "exited"


def test_a_full_disk_under_the_audit_log_delays_decisions_but_never_ends_them(
    enforcer_factory, containers, deadlines, small_disk
):
    enforcer = enforcer_factory(audit_dir=small_disk.path, retry_initial=0.2, retry_max=1.0)
    boxes = [containers(gpus=[GPU]) for _ in range(3)]
    for box in boxes:
        deadlines.past_idle(box)
    small_disk.fill()

    reply = enforcer.post("alerts", webhook(*(alert_for(b) for b in boxes)))
    assert reply.json()["accepted"] == 3
    eventually(
        lambda: enforcer.metric("ds01_enforcer_job_errors_total", stage="record") >= 3,
        WAIT,
        "audit writes to fail",
    )
    deadline = time.monotonic() + FULL_DISK_SECONDS
    while time.monotonic() < deadline:  # the disk stays full; the workers must stay alive
        assert requests.get(f"{enforcer.url}/healthz", timeout=5).status_code == 200
        time.sleep(0.5)
    small_disk.free()

    for box in boxes:
        [record] = enforcer.wait_records(box.id)
        assert record["decision"] == "stopped"  # acted once, recorded once, after the disk freed
        box.reload()
        assert box.status == "exited"
    eventually(lambda: enforcer.metric("ds01_enforcer_queue_depth") == 0, WAIT, "an empty queue")


def test_healthz_is_unhealthy_while_a_worker_is_stuck_on_one_job(
    enforcer_factory, containers, deadlines
):
    enforcer = enforcer_factory(action_delay=60.0, stuck_after=0.5, threads=1)
    box = containers(gpus=[GPU])
    deadlines.past_idle(box)
    assert requests.get(f"{enforcer.url}/healthz", timeout=5).status_code == 200

    enforcer.post("alerts", webhook(alert_for(box)))

    def unhealthy() -> dict | None:
        reply = requests.get(f"{enforcer.url}/healthz", timeout=5)
        return reply.json() if reply.status_code == 503 else None

    body = eventually(unhealthy, WAIT, "/healthz to report the stuck worker")
    assert body["status"] == "workers unhealthy"
    assert "stuck on job" in body["workers"]
