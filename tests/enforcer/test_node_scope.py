"""Each enforcer acts only on alerts of its own node (issue 18): the pure verdict, then a mixed
batch through the real app and worker against the private dockerd."""

from __future__ import annotations

import socket

import pytest

from ds01.policy import parse_policy
from enforcer.cli import build_parser, main
from enforcer.node_scope import NodeScope, judge_node
from tests.enforcer.conftest import GPU, alert_for, make_policy, webhook

CLUSTER = {
    "nodes": [
        {"name": "gpu-a", "exporter": "127.0.0.1:1", "enforcer": "http://127.0.0.1:2"},
        {"name": "gpu-b", "exporter": "127.0.0.1:3", "enforcer": "http://127.0.0.1:4"},
    ]
}
IN_CLUSTER = NodeScope(own="gpu-a", cluster=("gpu-a", "gpu-b"))
SINGLE = NodeScope(own="gpu-a")


@pytest.mark.parametrize(
    ("alert_node", "scope", "mine", "why"),
    [
        ("gpu-a", IN_CLUSTER, True, "node gpu-a is this node"),
        ("gpu-b", IN_CLUSTER, False, "not mine: alert is for node gpu-b, this is node gpu-a"),
        ("", IN_CLUSTER, False, "not mine: alert has no node label and the cluster lists nodes"),
        ("", SINGLE, True, "no node label and no cluster node list: single host"),
        ("gpu-a", SINGLE, True, "node gpu-a is this node"),
        ("gpu-b", SINGLE, False, "not mine: alert is for node gpu-b, this is node gpu-a"),
    ],
)
def test_judge_node(alert_node, scope, mine, why):
    verdict = judge_node(alert_node=alert_node, scope=scope)
    assert verdict.mine is mine
    assert verdict.why.startswith(why)
    assert (verdict.alert_node, verdict.own_node) == (alert_node, "gpu-a")


def test_node_scope_from_the_policy_flag_first_then_services_node_then_host_name():
    policy = parse_policy({"cluster": CLUSTER, "services": {"node": "gpu-b"}})
    assert NodeScope.from_policy(policy) == NodeScope("gpu-b", ("gpu-a", "gpu-b"))
    assert NodeScope.from_policy(policy, node="gpu-a").own == "gpu-a"
    plain = NodeScope.from_policy(parse_policy({}))
    assert plain == NodeScope(socket.gethostname().split(".")[0], ())


def test_cli_refuses_a_node_name_that_is_not_host_like(capsys):
    assert build_parser().parse_args(["--node", "gpu-a"]).node == "gpu-a"
    with pytest.raises(SystemExit) as exit_info:
        main(["--node", "a b", "--token-file", "/nonexistent"])
    assert exit_info.value.code == 2
    assert "--node: not a host-like name: 'a b'" in capsys.readouterr().err


def _on(node: str | None, alert: dict) -> dict:
    if node is not None:
        alert["labels"]["node"] = node
    return alert


@pytest.mark.integration
def test_a_mixed_batch_is_decided_per_alert_and_other_nodes_are_audited_not_mine(
    enforcer_factory, containers, deadlines
):
    policy = make_policy(cluster=CLUSTER, services={"node": "gpu-a"})
    enforcer = enforcer_factory(policy=policy)
    mine, theirs, nowhere = (containers(gpus=[GPU]) for _ in range(3))
    for box in (mine, theirs, nowhere):
        deadlines.past_idle(box)

    reply = enforcer.post(
        "alerts",
        webhook(
            _on("gpu-b", alert_for(theirs)),
            _on("gpu-a", alert_for(mine)),
            _on(None, alert_for(nowhere)),
        ),
    )

    assert reply.status_code == 200
    body = reply.json()
    assert (body["accepted"], body["not_mine"]) == (1, 2)
    assert "not mine: alert is for node gpu-b, this is node gpu-a" in body["detail"]
    assert "not mine: alert has no node label" in body["detail"]
    # the journal is written before the answer: no row means nothing will ever be done
    assert enforcer.journaled(theirs.id) == [] and enforcer.journaled(nowhere.id) == []
    [stopped] = enforcer.wait_records(mine.id)
    assert stopped["decision"] == "stopped"
    [b] = enforcer.records_for(theirs.id)
    assert (b["decision"], b["alert_node"], b["node"]) == ("not_mine", "gpu-b", "gpu-a")
    assert b["event"] == "stop" and b["container"] == theirs.name
    [none] = enforcer.records_for(nowhere.id)
    assert (none["decision"], none["alert_node"], none["node"]) == ("not_mine", "", "gpu-a")
    for box in (theirs, nowhere):
        box.reload()
        assert box.status == "running"
    assert enforcer.metric("ds01_enforcer_alerts_total", endpoint="alerts", status="not_mine") == 2


@pytest.mark.integration
def test_a_single_host_acts_on_unlabelled_and_own_alerts_but_not_another_nodes(
    enforcer_factory, containers, deadlines
):
    enforcer = enforcer_factory(policy=make_policy(services={"node": "gpu-a"}))
    plain, own, other = (containers(gpus=[GPU]) for _ in range(3))
    for box in (plain, own, other):
        deadlines.past_idle(box)

    reply = enforcer.post(
        "notify",
        webhook(
            _on(None, alert_for(plain, action="notify")),
            _on("gpu-a", alert_for(own, action="notify")),
            _on("gpu-z", alert_for(other, action="notify")),
        ),
    )

    assert reply.status_code == 200
    assert (reply.json()["accepted"], reply.json()["not_mine"]) == (2, 1)
    assert enforcer.journaled(other.id) == []
    assert len(enforcer.journaled(plain.id)) == 1 and len(enforcer.journaled(own.id)) == 1
    for acted_on in (plain, own):  # notices written before the containers are removed
        enforcer.wait_done(acted_on.id)
    [record] = enforcer.records_for(other.id)
    assert (record["event"], record["decision"], record["alert_node"]) == (
        "notify",
        "not_mine",
        "gpu-z",
    )
