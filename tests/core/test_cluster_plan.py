"""`ds01 up --nodes N` plans: distinct names, ports and folders; each node's policy validates
and names itself; sim UUIDs differ per node; the shared section lists every node."""

from __future__ import annotations

import itertools
import re
import textwrap
from pathlib import Path

import pytest
import yaml

from ds01.cluster_plan import (
    cluster_policy,
    cluster_section,
    node_policy,
    plan_nodes,
    shared_device_uuids,
    socket_path_problem,
)
from ds01.policy import parse_policy

REPO = Path(__file__).resolve().parents[2]


def _plans(count: int = 3, root: Path = Path("/tmp/c")):
    ports = itertools.count(20000)
    return plan_nodes(
        count, root, prometheus_port=9990, alertmanager_port=9991, free_port=lambda: next(ports)
    )


def _example() -> dict:
    return yaml.safe_load((REPO / "config" / "ds01.example.yaml").read_text())


def test_plan_gives_each_node_its_name_folder_and_ports_and_shares_the_central_pair():
    plans = _plans(3)
    assert [p.name for p in plans] == ["node-1", "node-2", "node-3"]
    assert len({p.root for p in plans}) == 3
    own = [(p.ports.exporter, p.ports.enforcer, p.ports.allocator) for p in plans]
    assert len(set(itertools.chain.from_iterable(own))) == 9
    assert {(p.ports.prometheus, p.ports.alertmanager) for p in plans} == {(9990, 9991)}
    sockets = [(p.dockerd_socket, p.gateway_socket, p.allocator_socket) for p in plans]
    assert len(set(itertools.chain.from_iterable(sockets))) == 9


@pytest.mark.parametrize("count", [0, -1, 17])
def test_plan_refuses_a_node_count_out_of_range(count):
    with pytest.raises(ValueError, match="--nodes: must be 1 to 16"):
        _plans(count)


def test_each_node_policy_validates_and_names_its_own_node_services_and_gpus():
    plans = _plans(3)
    section = cluster_section(plans, Path("/tmp/c/postgres.dsn"))
    for plan in plans:
        document = node_policy(
            _example(),
            plan,
            section,
            alertmanager_password_file=Path("/tmp/c/am/prometheus.password"),
        )
        policy = parse_policy(document, plan.name)
        assert policy.services.node == plan.name
        assert policy.services.exporter_listen == f"127.0.0.1:{plan.ports.exporter}"
        assert policy.services.allocator_socket == str(plan.allocator_socket)
        assert policy.services.audit_log == str(plan.audit_log)
        assert policy.services.token_file == str(plan.token_file)
        assert policy.gateway.socket == str(plan.gateway_socket)
        assert (policy.gpu.backend, policy.gpu.sim_topology) == ("sim", str(plan.topology_file))
        assert policy.cluster.store == "postgres"
        assert policy.cluster.node_names == ("node-1", "node-2", "node-3")


def test_cluster_section_lists_every_node_with_its_addresses():
    plans = _plans(2)
    policy = parse_policy(
        cluster_policy(_example(), cluster_section(plans, Path("/tmp/c/pg.dsn"))), "c"
    )
    node = policy.cluster.node("node-2")
    assert node is not None
    assert node.exporter == f"127.0.0.1:{plans[1].ports.exporter}"
    assert node.enforcer == f"http://127.0.0.1:{plans[1].ports.enforcer}"
    assert node.allocator == f"127.0.0.1:{plans[1].ports.allocator}"
    assert node.token_file == str(plans[1].token_file) != str(plans[0].token_file)
    assert policy.cluster.postgres_dsn_file == "/tmp/c/pg.dsn"
    assert policy.cluster.postgres_dsn == ""  # the password stays in the 0600 file


def test_node_policy_keeps_the_admins_limits_and_does_not_change_the_input():
    base = _example()
    before = yaml.safe_dump(base)
    plan = _plans(1)[0]
    document = node_policy(
        base,
        plan,
        cluster_section((plan,), Path("/x.dsn")),
        alertmanager_password_file=Path("/p"),
    )
    assert document["groups"] == base["groups"]
    assert yaml.safe_dump(base) == before


def test_the_example_cluster_section_parses_once_uncommented():
    text = (REPO / "config" / "ds01.example.yaml").read_text()
    block = text[text.index("#cluster:") :]
    lines = [line[1:] for line in block.splitlines() if line.startswith("#")]
    document = {**_example(), **yaml.safe_load("\n".join(lines))}
    policy = parse_policy(document, "example + cluster")
    assert policy.cluster.store == "postgres"
    assert policy.cluster.node_names == ("gpu1", "gpu2")
    assert policy.cluster.postgres_dsn_file == "/etc/ds01/postgres.dsn"


def test_the_cluster_docs_policy_block_validates_with_the_example():
    text = (REPO / "docs" / "cluster.md").read_text()
    [block] = re.findall(r"```yaml\n(.*?)```", text, re.S)
    snippet = yaml.safe_load(textwrap.dedent(block))
    document = {**_example(), **snippet}
    document["services"] = {**_example()["services"], **snippet["services"]}
    policy = parse_policy(document, "docs/cluster.md")
    assert policy.cluster.node_names == ("gpu1", "gpu2")
    assert policy.services.enforcer_listen == "10.0.0.11:9102"


def test_a_state_folder_too_long_for_the_nodes_sockets_is_named_before_anything_starts():
    assert socket_path_problem(Path("/var/lib/ds01/up"), 16) is None
    long = Path("/tmp") / ("x" * 60)
    problem = socket_path_problem(long, 3)
    assert problem is not None
    assert str(long / "node-3" / "docker/exec/containerd/containerd.sock.ttrpc") in problem
    assert "at most 100" in problem


def test_device_uuids_two_nodes_would_share_are_named():
    assert shared_device_uuids({"node-1": ["a", "b"], "node-2": ["c"]}) == []
    assert shared_device_uuids({"node-1": ["a", "b"], "node-2": ["b"], "node-3": ["a"]}) == [
        "a",
        "b",
    ]
