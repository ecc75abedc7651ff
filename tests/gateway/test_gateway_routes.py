"""Which rule applies to each Docker API request, with and without a version prefix."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

import pytest

from allocator import gateway_routes as routes


@pytest.mark.parametrize("prefix", ["", "/v1.41", "/v1.47"])
@pytest.mark.parametrize(
    ("method", "path", "kind", "target"),
    [
        ("GET", "/_ping", routes.PASS, ""),
        ("HEAD", "/_ping", routes.PASS, ""),
        ("GET", "/version", routes.PASS, ""),
        ("POST", "/containers/create?name=x", routes.CREATE, ""),
        ("GET", "/containers/json?all=1", routes.LIST, ""),
        ("POST", "/containers/prune", routes.SCOPE, ""),
        ("GET", "/containers/abc/json", routes.CONTAINER, "abc"),
        ("POST", "/containers/abc/stop", routes.CONTAINER, "abc"),
        ("DELETE", "/containers/abc?force=1", routes.CONTAINER, "abc"),
        ("POST", "/containers/abc/attach?stream=1", routes.CONTAINER, "abc"),
        ("PUT", "/containers/abc/archive?path=/", routes.CONTAINER, "abc"),
        ("POST", "/containers/abc/exec", routes.CONTAINER, "abc"),
        ("POST", "/exec/e1/start", routes.EXEC, "e1"),
        ("POST", "/exec/e1/resize?h=1", routes.EXEC, "e1"),
        ("POST", "/commit?container=abc&repo=x", routes.COMMIT, "abc"),
        ("POST", "/images/create?fromImage=x", routes.PASS, ""),
        ("POST", "/build?t=x", routes.PASS, ""),
        ("POST", "/session", routes.PASS, ""),
        ("POST", "/volumes/create", routes.VOLUME_CREATE, ""),
        ("POST", "/volumes/prune", routes.SCOPE, ""),
        ("DELETE", "/volumes/data", routes.VOLUME, "data"),
        ("GET", "/volumes", routes.PASS, ""),
        ("POST", "/networks/create", routes.NETWORK_CREATE, ""),
        ("POST", "/networks/prune", routes.SCOPE, ""),
        ("GET", "/events?since=1", routes.PASS, ""),
        ("POST", "/swarm/init", routes.ADMIN, ""),
        ("POST", "/plugins/pull", routes.ADMIN, ""),
        ("POST", "/something/new", routes.ADMIN, ""),
    ],
)
def test_route_table(prefix, method, path, kind, target):
    assert routes.route(method, prefix + path) == routes.Route(kind, target)


def test_owner_filter_is_added_to_existing_filters_in_both_forms():
    new = routes.with_owner_filter(
        '/v1.41/containers/json?all=1&filters={"status":["exited"]}', "a"
    )
    query = parse_qs(urlsplit(new).query)
    assert query["all"] == ["1"]
    assert json.loads(query["filters"][0]) == {"status": ["exited"], "label": ["ds01.user=a"]}
    old = routes.with_owner_filter('/containers/prune?filters={"label":{"x=1":true}}', "b")
    loaded = json.loads(parse_qs(urlsplit(old).query)["filters"][0])
    assert loaded == {"label": {"x=1": True, "ds01.user=b": True}}
    bare = routes.with_owner_filter("/containers/prune", "c")
    assert json.loads(parse_qs(urlsplit(bare).query)["filters"][0]) == {"label": ["ds01.user=c"]}


def test_a_forged_owner_filter_cannot_widen_the_scope():
    new = routes.with_owner_filter('/containers/prune?filters={"label":["ds01.user=bob"]}', "a")
    loaded = json.loads(parse_qs(urlsplit(new).query)["filters"][0])
    assert "ds01.user=a" in loaded["label"]  # label filters are ANDed by dockerd


def test_lists_filtered_on_compose_or_devcontainer_labels_are_a_tool_finding_its_own():
    compose = '/v1.41/containers/json?all=1&filters={"label":["com.docker.compose.project=p"]}'
    assert routes.finds_by_client_labels(compose)
    dev = '/containers/json?filters={"label":["devcontainer.local_folder=/home/a/p"]}'
    assert routes.finds_by_client_labels(dev)
    assert not routes.finds_by_client_labels('/containers/json?filters={"label":["x=1"]}')
    assert not routes.finds_by_client_labels("/containers/json?all=1")
    assert not routes.finds_by_client_labels("/containers/json?filters=nonsense")
