"""Two nodes' enforcers behind one real Alertmanager configured by ds01.promconfig (issue 18):
each alert is carried out by the enforcer of its `node` only. Both enforcers are real
`ds01 enforcer` processes sharing the private test dockerd, so only the routing and the node
check keep one from stopping the other's containers."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
import requests

from ds01.cluster_policy import ClusterNode
from ds01.promconfig import AlertmanagerSettings, render_alertmanager_config
from ds01.stack import free_port
from tests.enforcer.conftest import GPU, RunningEnforcer

pytestmark = pytest.mark.integration

NODES = ("gpu-a", "gpu-b")


@pytest.fixture
def node_enforcers(cli_enforcer, tmp_path) -> Callable[[], dict[str, RunningEnforcer]]:
    """Start one `ds01 enforcer` per node, each with its own policy (services.node) and state,
    the same cluster node list."""

    def start() -> dict[str, RunningEnforcer]:
        ports = {name: free_port() for name in NODES}
        cluster = {
            "nodes": [
                {
                    "name": name,
                    "exporter": "127.0.0.1:9",
                    "enforcer": f"http://127.0.0.1:{ports[name]}",
                }
                for name in NODES
            ]
        }
        policy = {"stop_grace": "0s", "idle_warning": "0s", "cluster": cluster}
        return {
            name: cli_enforcer(
                policy={**policy, "services": {"node": name}},
                folder=tmp_path / name,
                port=ports[name],
            )
            for name in NODES
        }

    return start


def _idle_stop(box, node: str) -> dict:
    now = datetime.now(UTC)
    return {
        "labels": {
            "alertname": "GPUContainerIdle",
            "severity": "critical",
            "action": "stop",
            "reason": "idle",
            "container_id": box.id,
            "container": "train",  # the same name on both nodes
            "user": "alice",
            "group": "student",
            "type": "docker",
            "node": node,
        },
        "annotations": {"summary": f"train on {node} has been idle"},
        "startsAt": now.isoformat(),
        "endsAt": (now + timedelta(hours=1)).isoformat(),
    }


def test_each_alert_is_carried_out_by_its_nodes_enforcer_only(
    node_enforcers, alertmanager_factory, containers, deadlines, token_file
):
    enforcers = node_enforcers()
    settings = AlertmanagerSettings(
        token_file=str(token_file),
        group_wait=0,
        group_interval=1,
        repeat_interval=3600,
        nodes=tuple(
            ClusterNode(name, "127.0.0.1:9", enforcer.url) for name, enforcer in enforcers.items()
        ),
    )
    am = alertmanager_factory(render_alertmanager_config(settings))
    on_a, on_b = containers(gpus=[GPU]), containers(gpus=[GPU])
    deadlines.past_idle(on_a)
    deadlines.past_idle(on_b)

    requests.post(
        f"{am.url}/api/v2/alerts",
        json=[_idle_stop(on_b, "gpu-b"), _idle_stop(on_a, "gpu-a")],
        auth=am.auth,
        timeout=10,
    ).raise_for_status()

    [stopped_b] = enforcers["gpu-b"].wait_records(on_b.id)
    [stopped_a] = enforcers["gpu-a"].wait_records(on_a.id)
    assert stopped_b["decision"] == stopped_a["decision"] == "stopped"
    for box in (on_a, on_b):
        box.reload()
        assert box.status == "exited"
    # Alertmanager sent each alert to its node's enforcer only: the other one never heard of
    # it (not even as `not_mine`), and each accepted exactly one alert.
    assert enforcers["gpu-a"].records_for(on_b.id, deferred=True) == []
    assert enforcers["gpu-b"].records_for(on_a.id, deferred=True) == []
    for enforcer in enforcers.values():
        accepted = enforcer.metric(
            "ds01_enforcer_alerts_total", endpoint="alerts", status="accepted"
        )
        assert accepted == 1
        assert (
            enforcer.metric("ds01_enforcer_alerts_total", endpoint="alerts", status="not_mine") == 0
        )


def test_an_alert_posted_to_the_wrong_node_is_audited_not_mine_by_a_real_process(
    node_enforcers, containers, deadlines
):
    enforcers = node_enforcers()
    box = containers(gpus=[GPU])
    deadlines.past_idle(box)
    alert = _idle_stop(box, "gpu-b")
    alert.update(status="firing", fingerprint="f00d", startsAt=_rfc3339(time.time()))

    reply = enforcers["gpu-a"].post("alerts", {"alerts": [alert]})

    assert reply.status_code == 200
    assert reply.json()["not_mine"] == 1 and reply.json()["accepted"] == 0
    [record] = enforcers["gpu-a"].records_for(box.id)
    assert (record["decision"], record["alert_node"], record["node"]) == (
        "not_mine",
        "gpu-b",
        "gpu-a",
    )
    box.reload()
    assert box.status == "running"


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat().replace("+00:00", "Z")
