"""prometheus.yml and alertmanager.yml for several nodes (issue 18): every target carries its
`node`, each node's stops and warnings reach that node's enforcer only, and promtool / amtool
accept the render."""

from __future__ import annotations

import socket
import subprocess

import pytest
import yaml

from ds01.cluster_policy import ClusterNode
from ds01.policy import default_policy, parse_policy
from ds01.promconfig import (
    AlertmanagerSettings,
    PrometheusSettings,
    main,
    render_alertmanager_config,
    render_prometheus_config,
)
from ds01.rulegen import RuleSettings, write_rule_files

CLUSTER = {
    "nodes": [
        {
            "name": "gpu-a",
            "exporter": "10.0.0.1:9101",
            "enforcer": "http://10.0.0.1:9102",
            "allocator": "10.0.0.1:9103",
        },
        {"name": "gpu-b", "exporter": "10.0.0.2:9101", "enforcer": "http://10.0.0.2:9102/"},
        {
            "name": "gpu-c",
            "exporter": "10.0.0.3:9101",
            "enforcer": "https://gpu-c.example.org:9102",
            "allocator": "10.0.0.3:9103",
        },
    ]
}
EMAIL = {
    "to": "{{ user }}@example.org",
    "addresses": {"carol": "carol@example.net"},
    "from": "ds01@example.org",
    "smarthost": "smtp.example.org:587",
}


def _policy(**extra):
    return parse_policy(
        {"cluster": CLUSTER, "services": {"token_file": "/etc/ds01/am-enforcer.token"}, **extra}
    )


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def _jobs(text: str) -> dict[str, list[tuple[list[str], dict]]]:
    return {
        job["job_name"]: [(s["targets"], s.get("labels", {})) for s in job["static_configs"]]
        for job in yaml.safe_load(text)["scrape_configs"]
    }


def test_a_single_host_policy_labels_every_target_with_its_effective_node():
    jobs = _jobs(render_prometheus_config(PrometheusSettings.from_policy(default_policy())))
    host = socket.gethostname().split(".")[0]
    assert set(jobs) == {"ds01-exporter", "ds01-allocator", "ds01-enforcer"}
    assert all(labels == {"node": host} for statics in jobs.values() for _, labels in statics)
    named = parse_policy({"services": {"node": "gpu-x"}})
    jobs = _jobs(render_prometheus_config(PrometheusSettings.from_policy(named)))
    assert all(labels == {"node": "gpu-x"} for statics in jobs.values() for _, labels in statics)


def test_a_cluster_scrapes_every_node_each_target_labelled_with_its_node():
    jobs = _jobs(render_prometheus_config(PrometheusSettings.from_policy(_policy())))
    assert jobs["ds01-exporter"] == [
        (["10.0.0.1:9101"], {"node": "gpu-a"}),
        (["10.0.0.2:9101"], {"node": "gpu-b"}),
        (["10.0.0.3:9101"], {"node": "gpu-c"}),
    ]
    assert jobs["ds01-enforcer"] == [
        (["10.0.0.1:9102"], {"node": "gpu-a"}),
        (["10.0.0.2:9102"], {"node": "gpu-b"}),
        (["gpu-c.example.org:9102"], {"node": "gpu-c"}),
    ]
    # gpu-b gives no allocator address: no allocator target for it
    assert jobs["ds01-allocator"] == [
        (["10.0.0.1:9103"], {"node": "gpu-a"}),
        (["10.0.0.3:9103"], {"node": "gpu-c"}),
    ]


def test_a_cluster_without_allocator_addresses_has_no_allocator_job():
    nodes = (ClusterNode("a", "127.0.0.1:1", "http://127.0.0.1:2"),)
    assert set(_jobs(render_prometheus_config(PrometheusSettings(nodes=nodes)))) == {
        "ds01-exporter",
        "ds01-enforcer",
    }


def test_promtool_accepts_the_cluster_prometheus_config(tmp_path, promtool):
    write_rule_files(RuleSettings(), tmp_path / "rules")
    path = tmp_path / "prometheus.yml"
    path.write_text(render_prometheus_config(PrometheusSettings.from_policy(_policy())))
    result = _run(promtool, "check", "config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_cluster_routes_each_nodes_alerts_to_its_own_enforcer():
    config = yaml.safe_load(render_alertmanager_config(AlertmanagerSettings.from_policy(_policy())))
    routes = {r["receiver"]: r for r in config["route"]["routes"]}
    assert list(routes) == [
        "ds01-enforcer-stop-gpu-a",
        "ds01-enforcer-notify-gpu-a",
        "ds01-enforcer-stop-gpu-b",
        "ds01-enforcer-notify-gpu-b",
        "ds01-enforcer-stop-gpu-c",
        "ds01-enforcer-notify-gpu-c",
    ]
    assert routes["ds01-enforcer-stop-gpu-b"]["matchers"] == ['action="stop"', 'node="gpu-b"']
    assert routes["ds01-enforcer-notify-gpu-b"]["matchers"] == ['action="notify"', 'node="gpu-b"']
    assert all(r["group_by"] == ["node", "container_id", "alertname"] for r in routes.values())
    receivers = {r["name"]: r for r in config["receivers"]}
    hooks = {
        name: (r["webhook_configs"][0]["url"], r["webhook_configs"][0]["http_config"])
        for name, r in receivers.items()
        if name.startswith("ds01-enforcer")
    }
    bearer = {
        "authorization": {"type": "Bearer", "credentials_file": "/etc/ds01/am-enforcer.token"}
    }
    assert hooks == {
        "ds01-enforcer-stop-gpu-a": ("http://10.0.0.1:9102/alerts", bearer),
        "ds01-enforcer-notify-gpu-a": ("http://10.0.0.1:9102/notify", bearer),
        "ds01-enforcer-stop-gpu-b": ("http://10.0.0.2:9102/alerts", bearer),
        "ds01-enforcer-notify-gpu-b": ("http://10.0.0.2:9102/notify", bearer),
        "ds01-enforcer-stop-gpu-c": ("https://gpu-c.example.org:9102/alerts", bearer),
        "ds01-enforcer-notify-gpu-c": ("https://gpu-c.example.org:9102/notify", bearer),
    }
    assert "ds01-enforcer-stop" not in receivers  # no catch-all enforcer in a cluster
    assert receivers["admin"] == {"name": "admin"}
    assert config["route"]["group_by"] == ["alertname", "node"]
    assert config["inhibit_rules"][0]["equal"] == ["node", "container_id"]
    assert config["inhibit_rules"][1]["equal"] == ["node", "instance"]


def _routes_test(amtool: str, path, *args: str) -> subprocess.CompletedProcess[str]:
    return _run(amtool, "config", "routes", "test", f"--config.file={path}", *args)


STOP = ["alertname=GPUContainerIdle", "severity=critical", "action=stop", "reason=idle"]
STOP += ["container_id=c0a11ce", "container=train", "user=alice"]
NOTIFY = ["alertname=GPUContainerIdleWarning", "severity=warning", "action=notify"]
NOTIFY += ["reason=idle", "container_id=c0a11ce", "container=train", "user=alice"]


@pytest.mark.parametrize(
    ("labels", "receivers"),
    [
        ([*STOP, "node=gpu-a"], "ds01-enforcer-stop-gpu-a"),
        ([*STOP, "node=gpu-b"], "ds01-enforcer-stop-gpu-b"),
        ([*NOTIFY, "node=gpu-c"], "ds01-enforcer-notify-gpu-c"),
        ([*NOTIFY, "node=gpu-a"], "ds01-enforcer-notify-gpu-a"),
        (STOP, "admin"),  # no node: no enforcer can claim it, the admin sees it
        ([*STOP, "node=gpu-z"], "admin"),  # a node not in the list
        (["alertname=DS01ExporterDown", "severity=critical", "node=gpu-b"], "admin"),
    ],
)
def test_amtool_routes_each_alert_to_its_nodes_enforcer(tmp_path, amtool, labels, receivers):
    path = tmp_path / "alertmanager.yml"
    path.write_text(render_alertmanager_config(AlertmanagerSettings.from_policy(_policy())))
    result = _routes_test(amtool, path, f"--verify.receivers={receivers}", *labels)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_cluster_with_owner_email_keeps_the_mail_route_and_amtool_accepts_it(tmp_path, amtool):
    policy = _policy(notifications={"email": EMAIL})
    path = tmp_path / "alertmanager.yml"
    path.write_text(
        render_alertmanager_config(AlertmanagerSettings.from_policy(policy), admin_enabled=True)
    )
    result = _run(amtool, "check-config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    first = yaml.safe_load(path.read_text())["route"]["routes"][0]
    assert first["receiver"] == "ds01-owner-email" and first["continue"] is True
    assert first["group_by"] == ["node", "container_id", "alertname"]
    # a stop on gpu-b reaches carol's mail and gpu-b's enforcer, nothing else
    result = _routes_test(
        amtool,
        path,
        "--verify.receivers=ds01-owner-email-carol,ds01-enforcer-stop-gpu-b",
        *[label for label in STOP if not label.startswith("user=")],
        "user=carol",
        "node=gpu-b",
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_single_host_render_is_unchanged_without_a_node_list():
    nodes = (ClusterNode("a", "127.0.0.1:1", "http://127.0.0.1:2"),)
    plain = render_alertmanager_config(AlertmanagerSettings())
    assert plain == render_alertmanager_config(AlertmanagerSettings(nodes=()))
    assert plain != render_alertmanager_config(AlertmanagerSettings(nodes=nodes))
    assert "node=" not in plain


@pytest.mark.parametrize(
    ("nodes", "message"),
    [
        (
            (ClusterNode("a", "h:1", "http://h:2"), ClusterNode("a", "h:3", "http://h:4")),
            "each node name must appear once",
        ),
        ((ClusterNode("a", "h:1", "http://u:secret@h:2"),), r"nodes\[a\].enforcer.*never in"),
        ((ClusterNode("a", "h:1", "h:2"),), r"nodes\[a\].enforcer: expected http"),
    ],
)
def test_bad_node_lists_are_refused(nodes, message):
    with pytest.raises(ValueError, match=message):
        AlertmanagerSettings(nodes=nodes)


def test_prometheus_settings_refuse_a_node_listed_twice():
    twice = (ClusterNode("a", "h:1", "http://h:2"), ClusterNode("a", "h:3", "http://h:4"))
    with pytest.raises(ValueError, match="each node name must appear once"):
        PrometheusSettings(nodes=twice)


def test_cli_renders_a_cluster_policy(tmp_path, amtool, promtool):
    policy_file = tmp_path / "ds01.yaml"
    policy_file.write_text(yaml.safe_dump({"cluster": CLUSTER}))
    prom, am = tmp_path / "prometheus.yml", tmp_path / "alertmanager.yml"
    argv = ["--policy", str(policy_file), "--prometheus-out", str(prom)]
    assert main([*argv, "--alertmanager-out", str(am)]) == 0
    write_rule_files(RuleSettings(), tmp_path / "rules")
    assert _run(promtool, "check", "config", str(prom)).returncode == 0
    assert _run(amtool, "check-config", str(am)).returncode == 0
    assert "http://10.0.0.2:9102/alerts" in am.read_text()
    assert {"node": "gpu-c"} in [labels for _, labels in _jobs(prom.read_text())["ds01-exporter"]]


def test_a_node_with_its_own_token_file_gets_it_the_others_the_shared_one(tmp_path, amtool):
    nodes = [dict(n) for n in CLUSTER["nodes"]]
    nodes[1]["token_file"] = "/etc/ds01/gpu-b.token"
    policy = parse_policy({"cluster": {"nodes": nodes}, "services": {"token_file": "/t/shared"}})
    text = render_alertmanager_config(AlertmanagerSettings.from_policy(policy))
    files = {
        r["name"]: r["webhook_configs"][0]["http_config"]["authorization"]["credentials_file"]
        for r in yaml.safe_load(text)["receivers"]
        if r["name"].startswith("ds01-enforcer")
    }
    assert files["ds01-enforcer-stop-gpu-b"] == files["ds01-enforcer-notify-gpu-b"]
    assert files["ds01-enforcer-stop-gpu-b"] == "/etc/ds01/gpu-b.token"
    assert {
        files[f"ds01-enforcer-{a}-{n}"] for a in ("stop", "notify") for n in ("gpu-a", "gpu-c")
    } == {"/t/shared"}
    path = tmp_path / "alertmanager.yml"
    path.write_text(text)
    assert _run(amtool, "check-config", str(path)).returncode == 0
