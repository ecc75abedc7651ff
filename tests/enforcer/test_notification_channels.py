"""The enforcer's owner channels against a real dockerd: terminals (a real pty listed in a utmp
file in glibc's format), the container file, their switches, and failures that never block."""

from __future__ import annotations

import os
import select
import time

import pytest

from enforcer.terminals import USER_PROCESS, UtmpEntry, pack_utmp
from tests.enforcer.conftest import GPU, alert_for, make_policy, webhook

pytestmark = pytest.mark.integration


def test_a_warning_reaches_the_owners_terminal_when_the_file_channel_is_off(
    enforcer_factory, containers, tmp_path
):
    master, slave = os.openpty()
    try:
        line = os.ttyname(slave).removeprefix("/dev/")
        os.chmod(os.ttyname(slave), 0o620)
        utmp = tmp_path / "utmp"
        utmp.write_bytes(pack_utmp(UtmpEntry(USER_PROCESS, os.getpid(), line, "root", "", 0)))
        policy = make_policy(notifications={"container_file": False, "utmp_path": str(utmp)})
        enforcer = enforcer_factory(policy=policy)
        box = containers(gpus=[GPU], labels={"ds01.user": "root"})

        enforcer.post("notify", webhook(alert_for(box, action="notify", summary="idle, stop at 5")))

        [record] = enforcer.wait_records(box.id)
        assert record["decision"] == "notified"
        assert record["detail"] == "terminals: 1 of 1 written"
        ready, _, _ = select.select([master], [], [], 10)
        text = os.read(master, 65536).decode() if ready else ""
        assert f"about container {box.name}:" in text and "idle, stop at 5" in text
        metric = enforcer.metric
        assert metric("ds01_enforcer_notifications_total", channel="terminal", result="delivered")
        assert box.exec_run(["cat", "/workspace/.ds01-alerts"]).exit_code != 0  # channel off
    finally:
        os.close(master)
        os.close(slave)


def test_failing_channels_are_counted_and_never_block_the_stop(
    enforcer_factory, containers, deadlines, tmp_path
):
    utmp = tmp_path / "utmp"  # root is "logged in" on a terminal that no longer exists
    utmp.write_bytes(pack_utmp(UtmpEntry(USER_PROCESS, 1, "pts/98765", "root", "", 0)))
    enforcer = enforcer_factory(
        policy=make_policy(notifications={"utmp_path": str(utmp)}),
        notice_path="/no/such/folder/.ds01-alerts",
    )
    box = containers(gpus=[GPU], labels={"ds01.user": "root"})
    # a runtime stop: no warning of the enforcer's own comes first, so one try per channel
    deadlines.publish(box, idle=time.time() + 86400, runtime=time.time() - 120)

    enforcer.post("alerts", webhook(alert_for(box, reason="max_runtime")))

    [record] = enforcer.wait_records(box.id)
    assert record["decision"] == "stopped"
    assert (
        "notice not written" in record["detail"] and "terminals: 0 of 1 written" in record["detail"]
    )
    box.reload()
    assert box.status == "exited"
    metric = enforcer.metric
    assert (
        metric("ds01_enforcer_notifications_total", channel="container_file", result="failed") == 1
    )
    assert metric("ds01_enforcer_notifications_total", channel="terminal", result="failed") == 1
