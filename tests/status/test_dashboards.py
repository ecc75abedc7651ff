"""Structure of the Grafana dashboards and provisioning files (the live queries: test_live.py)."""

from __future__ import annotations

import json
import re

import yaml

from tests.status.dashboards import (
    BUILTIN,
    DASHBOARDS,
    PROVISIONING,
    load_dashboards,
    panels,
    queries,
    used_variables,
)

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def test_both_dashboards_exist_with_unique_fixed_uids():
    boards = load_dashboards()
    assert set(boards) == {"ds01-admin.json", "ds01-user.json"}
    uids = [b["uid"] for b in boards.values()]
    assert sorted(uids) == ["ds01-admin", "ds01-user"]


def test_panel_ids_unique_and_positive_per_dashboard():
    for name, board in load_dashboards().items():
        ids = [p["id"] for p in panels(board)]
        assert len(ids) == len(set(ids)), name
        assert all(isinstance(i, int) and i > 0 for i in ids), name


def test_every_panel_and_target_uses_the_datasource_variable():
    for name, board in load_dashboards().items():
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        for panel in panels(board):
            if panel["type"] == "row":
                continue
            assert panel["datasource"] == DATASOURCE, (name, panel["title"])
            assert panel["targets"], (name, panel["title"])
            for target in panel["targets"]:
                assert target.get("datasource", DATASOURCE) == DATASOURCE
                assert target["expr"].strip() and target["refId"]
        for variable in variables.values():
            if variable["type"] == "query":
                assert variable["datasource"] == DATASOURCE


def test_no_literal_urls_or_hosts_in_dashboards():
    for path in DASHBOARDS.glob("*.json"):
        text = path.read_text()
        assert not re.search(r"https?://", text), path
        assert not re.search(r"\b(localhost|127\.0\.0\.1)\b|:9090\b", text), path


def test_every_variable_used_is_defined_or_builtin():
    for name, board in load_dashboards().items():
        defined = {v["name"] for v in board["templating"]["list"]} | set(BUILTIN)
        for query in queries(name, board):
            assert used_variables(query.expr) <= defined, (query.where, query.expr)


def test_user_dashboard_has_a_user_variable_and_filters_on_it():
    board = load_dashboards()["ds01-user.json"]
    assert "user" in {v["name"] for v in board["templating"]["list"]}
    for query in queries("ds01-user.json", board):
        if query.where.startswith("panel"):
            assert '$user"' in query.expr, query.where


# A series selector: a metric name, with or without its {matchers}, not a function call.
_SELECTOR = re.compile(r"\b((?:ds01[_:][\w:]*)|ALERTS|up)\b(\{[^}]*\})?(?!\s*\()")


def test_admin_dashboard_has_a_node_variable_and_every_series_filters_on_it():
    """Several GPU nodes behind one Prometheus: the admin picks one, some or all nodes."""
    board = load_dashboards()["ds01-admin.json"]
    [node] = [v for v in board["templating"]["list"] if v["name"] == "node"]
    assert node["includeAll"] and node["multi"] and node["allValue"] == ".*"
    for query in queries("ds01-admin.json", board):
        if not query.where.startswith("panel"):
            continue
        selectors = _SELECTOR.findall(query.expr)
        assert selectors, query.expr
        for metric, matchers in selectors:
            assert 'node=~"$node"' in matchers, (query.where, metric, query.expr)


def test_joins_on_a_device_also_match_its_node():
    """Device UUIDs are the node's: a join on the UUID alone could pair two nodes' series."""
    for name, board in load_dashboards().items():
        for query in queries(name, board):
            for keys in re.findall(r"on\s*\(([^)]*)\)", query.expr):
                if "device_uuid" in keys:
                    assert "node" in keys, (name, query.where, query.expr)


def test_admin_dashboard_covers_the_issue():
    titles = " | ".join(p.get("title", "") for p in panels(load_dashboards()["ds01-admin.json"]))
    for needed in (
        "by state",
        "holding GPUs",
        "Idle GPU hours",
        "by reason",
        "Queue length",
        "Queue wait",
        "Last collection age",
    ):
        assert needed in titles


def test_provisioning_points_at_the_fixed_datasource_uid():
    sources = yaml.safe_load((PROVISIONING / "datasources" / "ds01.yaml").read_text())
    (source,) = sources["datasources"]
    assert source["uid"] == "ds01-prometheus" and source["type"] == "prometheus"
    providers = yaml.safe_load((PROVISIONING / "dashboards" / "ds01.yaml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]


def test_dashboards_are_plain_json_objects():
    for path in DASHBOARDS.glob("*.json"):
        board = json.loads(path.read_text())
        assert board["schemaVersion"] >= 36 and board["title"]
