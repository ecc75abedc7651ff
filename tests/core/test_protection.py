"""Protection from the policy only, on facts a user cannot choose (the gateway's stamp)."""

from __future__ import annotations

import pytest

from ds01.policy import parse_policy
from ds01.protection import made_by_admin, protection

POLICY = parse_policy(
    {
        "users": {"ada": "admin", "alice": "student"},
        "protected": {"names": ["ds01-grafana"], "users": ["svc"]},
        "gateway": {"admin_groups": ["admin"]},
    },
    "<test>",
)


@pytest.mark.parametrize(
    ("stamped_user", "admin"),
    [(None, True), ("root", True), ("ada", True), ("alice", False), ("", False)],
)
def test_made_by_admin_only_without_a_stamp_root_or_an_admin_group(stamped_user, admin):
    assert made_by_admin(stamped_user=stamped_user, policy=POLICY) is admin


@pytest.mark.parametrize("stamped_user", [None, "root", "ada"])
def test_a_protected_name_protects_the_containers_admins_made(stamped_user):
    guard = protection(name="/ds01-grafana", stamped_user=stamped_user, policy=POLICY)

    assert guard.protected
    assert guard.why == f"name ds01-grafana, made by {stamped_user or 'root'}"


def test_a_users_container_with_a_protected_name_is_not_protected():
    guard = protection(name="ds01-grafana", stamped_user="alice", policy=POLICY)

    assert not guard.protected
    assert guard.why == "name ds01-grafana is protected only for admins' containers (made by alice)"


def test_a_protected_user_by_the_stamp_only():
    assert protection(name="x", stamped_user="svc", policy=POLICY).protected
    assert not protection(name="x", stamped_user=None, policy=POLICY).why.startswith("user")
    assert not protection(name="svc", stamped_user="alice", policy=POLICY).protected


def test_nothing_else_is_protected():
    assert protection(name="train", stamped_user="alice", policy=POLICY) == protection(
        name="train", stamped_user=None, policy=POLICY
    )
    assert not protection(name="train", stamped_user=None, policy=POLICY).protected
