"""The policy's `gateway:` section: defaults that work, and errors that name the key."""

from __future__ import annotations

import pytest

from ds01.policy import PolicyError, parse_policy


def test_defaults():
    gateway = parse_policy({}).gateway
    assert gateway.socket == "/run/ds01/docker.sock"
    assert gateway.docker_socket == "/run/ds01/dockerd.sock"
    assert gateway.list_all_containers and gateway.admin_groups == {"admin"}
    assert gateway.allowed_capabilities == {"SYS_PTRACE"} and not gateway.allowed_bind_paths


def test_the_default_admin_group_only_where_the_policy_has_one():
    policy = parse_policy({"groups": {"lab": {"max_gpus": 1}}, "default_group": "lab"})
    assert policy.gateway.admin_groups == frozenset()


def test_values_are_normalised():
    gateway = parse_policy(
        {
            "gateway": {
                "allowed_capabilities": ["cap_sys_ptrace", "NET_RAW"],
                "allowed_bind_paths": ["/scratch", "/data"],
                "list_all_containers": False,
            }
        }
    ).gateway
    assert gateway.allowed_capabilities == {"SYS_PTRACE", "NET_RAW"}
    assert gateway.allowed_bind_paths == ("/data", "/scratch")
    assert not gateway.list_all_containers


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"admin_groups": ["wizards"]}, "gateway.admin_groups"),
        ({"allowed_bind_paths": ["relative"]}, "gateway.allowed_bind_paths"),
        ({"allowed_bind_paths": ["/"]}, "gateway.allowed_bind_paths"),
        ({"allowed_devices": ["/dev/nvidia0"]}, "gateway.allowed_devices"),
        ({"allowed_capabilities": ["ALL"]}, "gateway.allowed_capabilities"),
        ({"max_create_body": 10}, "gateway.max_create_body"),
        ({"list_all_containers": "yes"}, "gateway.list_all_containers"),
        ({"sockett": "/x"}, "gateway.sockett"),
    ],
)
def test_bad_values_name_the_key(section, key):
    with pytest.raises(PolicyError) as caught:
        parse_policy({"gateway": section})
    assert key in str(caught.value)
