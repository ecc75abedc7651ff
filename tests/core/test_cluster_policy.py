"""The `cluster:` policy section: the shared contract every multi-node part reads."""

from __future__ import annotations

import socket

import pytest

from ds01.cluster_policy import Cluster, ClusterNode, effective_node
from ds01.policy import PolicyError, parse_policy


def test_no_cluster_section_means_one_node_on_sqlite() -> None:
    policy = parse_policy({})
    assert policy.cluster == Cluster()
    assert policy.cluster.store == "sqlite"
    assert policy.cluster.nodes == ()


def test_a_node_list_and_a_postgres_store_parse_into_records() -> None:
    policy = parse_policy(
        {
            "services": {"node": "gpu-a"},
            "cluster": {
                "store": "postgres",
                "postgres_dsn_file": "/etc/ds01/postgres.dsn",
                "nodes": [
                    {
                        "name": "gpu-a",
                        "exporter": "10.0.0.1:9101",
                        "enforcer": "http://10.0.0.1:9102/",
                    },
                    {
                        "name": "gpu-b",
                        "exporter": "10.0.0.2:9101",
                        "enforcer": "https://10.0.0.2:9102",
                        "allocator": "10.0.0.2:9103",
                    },
                ],
            },
        }
    )
    assert policy.services.node == "gpu-a"
    assert policy.cluster.node_names == ("gpu-a", "gpu-b")
    assert policy.cluster.node("gpu-a") == ClusterNode(
        "gpu-a", "10.0.0.1:9101", "http://10.0.0.1:9102"
    )
    assert policy.cluster.node("gpu-b").allocator == "10.0.0.2:9103"
    assert policy.cluster.node("gpu-c") is None


@pytest.mark.parametrize(
    ("cluster", "key"),
    [
        ({"store": "mysql"}, "cluster.store"),
        ({"store": "postgres"}, "cluster.store"),
        ({"postgres_dsn": "x", "postgres_dsn_file": "/f"}, "cluster.postgres_dsn"),
        ({"postgres_dsn_file": "relative"}, "cluster.postgres_dsn_file"),
        ({"nodes": {"a": 1}}, "cluster.nodes"),
        ({"nodes": [{"exporter": "h:1", "enforcer": "http://h"}]}, "cluster.nodes[0].name"),
        (
            {"nodes": [{"name": "a b", "exporter": "h:1", "enforcer": "http://h"}]},
            "cluster.nodes[0].name",
        ),
        (
            {"nodes": [{"name": "a", "exporter": "h", "enforcer": "http://h"}]},
            "cluster.nodes[0].exporter",
        ),
        (
            {"nodes": [{"name": "a", "exporter": "h:1", "enforcer": "h:2"}]},
            "cluster.nodes[0].enforcer",
        ),
        (
            {"nodes": [{"name": "a", "exporter": "h:1", "enforcer": "http://h", "x": 1}]},
            "cluster.nodes[0].x",
        ),
        (
            {
                "nodes": [
                    {"name": "a", "exporter": "h:1", "enforcer": "http://h"},
                    {"name": "a", "exporter": "h:2", "enforcer": "http://g"},
                ]
            },
            "cluster.nodes",
        ),
        ({"replicas": 3}, "cluster.replicas"),
    ],
)
def test_a_bad_cluster_section_is_refused_naming_the_key(cluster: dict, key: str) -> None:
    with pytest.raises(PolicyError) as err:
        parse_policy({"cluster": cluster})
    assert err.value.key == key


def test_a_node_name_that_is_not_host_like_is_refused() -> None:
    with pytest.raises(PolicyError) as err:
        parse_policy({"services": {"node": "gpu a/../x"}})
    assert err.value.key == "services.node"


def test_the_node_defaults_to_the_short_host_name() -> None:
    assert effective_node("gpu-z") == "gpu-z"
    assert effective_node("") == socket.gethostname().split(".")[0]


def test_a_node_may_name_its_own_enforcer_token_file() -> None:
    node = {"name": "a", "exporter": "h:1", "enforcer": "http://h:2"}
    policy = parse_policy({"cluster": {"nodes": [{**node, "token_file": "/etc/ds01/a.token"}]}})
    assert policy.cluster.nodes[0].token_file == "/etc/ds01/a.token"
    assert parse_policy({"cluster": {"nodes": [node]}}).cluster.nodes[0].token_file is None
    with pytest.raises(PolicyError, match=r"cluster.nodes\[0\].token_file: must be an absolute"):
        parse_policy({"cluster": {"nodes": [{**node, "token_file": "a.token"}]}})
