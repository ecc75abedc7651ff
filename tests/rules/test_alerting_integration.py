"""Live Prometheus + Alertmanager with the generated rules and routes at compressed timings.

A tiny HTTP server plays the exporter (a text exposition the test controls) and a recording
HTTP receiver plays the enforcer. A container crossing its idle deadline must produce exactly
one stop webhook, with the contract labels and the bearer token; warnings of a container that
is being stopped are inhibited.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from ds01.policy import default_policy
from ds01.promconfig import (
    AlertmanagerSettings,
    PrometheusSettings,
    render_alertmanager_config,
    render_prometheus_config,
)
from ds01.rulegen import RuleSettings, render_rule_files
from ds01.stack import free_port
from tests.harness.waiting import eventually

pytestmark = pytest.mark.integration

CONTAINER = {
    "container_id": "c0a11ce" + "0" * 57,
    "container": "train-a",
    "user": "alice",
    "group": "student",
    "type": "docker",
}
WAIT = 60.0  # an upper bound for waits, never an expectation of speed


class FakeExporter:
    """The contract series of one container; deadlines can be moved while Prometheus scrapes."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.idle_deadline = float("inf")
        self.runtime_deadline: float | None = None

    def set(self, **values: float | None) -> None:
        with self.lock:
            for key, value in values.items():
                setattr(self, key, value)

    def body(self) -> str:
        labels = ",".join(f'{k}="{v}"' for k, v in CONTAINER.items())
        with self.lock:
            lines = [
                "# TYPE ds01_exporter_last_collect_timestamp_seconds gauge",
                f"ds01_exporter_last_collect_timestamp_seconds {time.time():.3f}",
                "# TYPE ds01_container_idle_deadline_timestamp_seconds gauge",
                f"ds01_container_idle_deadline_timestamp_seconds{{{labels}}} "
                f"{_number(self.idle_deadline)}",
            ]
            if self.runtime_deadline is not None:
                lines += [
                    "# TYPE ds01_container_runtime_deadline_timestamp_seconds gauge",
                    f"ds01_container_runtime_deadline_timestamp_seconds{{{labels}}} "
                    f"{_number(self.runtime_deadline)}",
                ]
        return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    return "+Inf" if value == float("inf") else f"{value:.3f}"


def _am_alerts(am) -> list[dict[str, Any]]:
    return requests.get(f"{am.url}/api/v2/alerts", timeout=5, auth=am.auth).json()


def _flushes_since(log: Path, offset: int, alertname: str) -> int:
    """Flushes of the aggregation group of `alertname` logged after byte `offset`."""
    with open(log, "rb") as handle:
        handle.seek(offset)
        text = handle.read().decode(errors="replace")
    group = f'alertname=\\"{alertname}\\"'
    return sum(1 for line in text.splitlines() if "msg=flushing" in line and group in line)


def _suppressed(am, alertname: str) -> bool:
    return any(
        a["labels"]["alertname"] == alertname
        and a["status"]["state"] == "suppressed"
        and a["status"]["inhibitedBy"]
        for a in _am_alerts(am)
    )


def test_deadline_crossing_sends_one_stop_with_token_and_inhibits_warnings(
    tmp_path, exposition, recorder, prometheus_factory, alertmanager_factory
):
    token = "t0ken-for-this-test"
    token_file = tmp_path / "enforcer.token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)

    am = alertmanager_factory(
        render_alertmanager_config(
            AlertmanagerSettings(
                enforcer_url=recorder.url,
                token_file=str(token_file),
                group_wait=0,
                group_interval=1,
                repeat_interval=3600,  # one delivery per alert within this test
                notify_repeat_interval=3600,
            )
        ),
        log_level="debug",
    )

    exporter = FakeExporter()
    exposition.body = exporter.body
    # Warnings an hour ahead: a warning fires as soon as a deadline is within the hour.
    settings = RuleSettings.from_policy(
        default_policy(), idle_warning=3600, runtime_warning=3600, exporter_stale_after=30
    )
    unreachable = f"127.0.0.1:{free_port()}"  # allocator and enforcer metrics are not needed here
    prometheus_factory(
        render_prometheus_config(
            PrometheusSettings(
                exporter_targets=(exposition.target,),
                allocator_targets=(unreachable,),
                enforcer_targets=(unreachable,),
                alertmanager_targets=(am.url.removeprefix("http://"),),
                alertmanager_password_file=str(am.sender_password_file),
                scrape_interval=1,
                evaluation_interval=1,
            )
        ),
        extra_files={f"rules/{name}": text for name, text in render_rule_files(settings).items()},
    )

    # 1. The idle deadline comes within the warning lead time: one warning to /notify.
    exporter.set(idle_deadline=time.time() + 1800)
    notify = eventually(lambda: recorder.posts("/notify"), WAIT, "the idle warning")
    warning = notify[0].payload["alerts"][0]
    assert warning["labels"]["alertname"] == "GPUContainerIdleWarning"
    assert notify[0].authorization == f"Bearer {token}"
    assert recorder.posts("/alerts") == []

    # 2. The deadline passes: exactly one stop webhook with the contract labels and the token.
    exporter.set(idle_deadline=time.time() + 1)
    stops = eventually(lambda: recorder.posts("/alerts"), WAIT, "the stop webhook")
    assert stops[0].authorization == f"Bearer {token}"
    assert stops[0].payload["status"] == "firing"
    [alert] = stops[0].payload["alerts"]
    assert alert["labels"] == {
        "alertname": "GPUContainerIdle",
        "severity": "critical",
        "action": "stop",
        "reason": "idle",
        **CONTAINER,
    }
    assert "is being stopped now" in alert["annotations"]["summary"]

    # 3. The warning of the container being stopped is inhibited, and so is a new one.
    eventually(
        lambda: _suppressed(am, "GPUContainerIdleWarning"),
        WAIT,
        "the idle warning to be inhibited",
    )
    exporter.set(runtime_deadline=time.time() + 1800)
    eventually(
        lambda: _suppressed(am, "GPUContainerRuntimeWarning"),
        WAIT,
        "the runtime warning to be inhibited",
    )
    # Two more flushes of every group (Alertmanager's debug log says when it flushes): a repeat
    # or an uninhibited warning would have been sent by the first of them.
    mark = am.child.log_path.stat().st_size
    for name in ("GPUContainerIdle", "GPUContainerIdleWarning", "GPUContainerRuntimeWarning"):
        eventually(
            lambda n=name: _flushes_since(am.child.log_path, mark, n) >= 2,
            WAIT,
            f"two flushes of the {name} group",
        )
    assert len(recorder.posts("/alerts")) == 1
    names = [
        a["labels"]["alertname"] for d in recorder.posts("/notify") for a in d.payload["alerts"]
    ]
    assert names == ["GPUContainerIdleWarning"]
    assert all(d.authorization == f"Bearer {token}" for d in recorder.deliveries)
