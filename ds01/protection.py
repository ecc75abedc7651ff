"""Who is protected from enforcement: only the policy decides, on facts users cannot choose.

A container's name and its labels are written by whoever made it. The gateway replaces every
`ds01.*` label a client sends and stamps `ds01.user` from the connecting uid, and dockerd's own
socket is root's alone, so the stamp (or its absence: made by root on dockerd directly) is the
one trustworthy fact. Protection by name therefore covers only containers root or an admin
made; `protected.users` matches only the stamped identity, never a home path or a mount.
"""

from __future__ import annotations

from dataclasses import dataclass

from .policy_model import Policy


@dataclass(frozen=True)
class Protection:
    protected: bool
    why: str


def made_by_admin(*, stamped_user: str | None, policy: Policy) -> bool:
    """No stamp (root on dockerd's socket), root through the gateway, or an admin group."""
    if stamped_user is None or stamped_user == "root":
        return True
    return policy.group_of(stamped_user).name in policy.gateway.admin_groups


def protection(*, name: str, stamped_user: str | None, policy: Policy) -> Protection:
    """Protected by `protected.users` (stamped user) or `protected.names` (admins' containers)."""
    name = name.lstrip("/")
    if stamped_user is not None and stamped_user in policy.protected_users:
        return Protection(True, f"user {stamped_user}")
    if name in policy.protected_names:
        if made_by_admin(stamped_user=stamped_user, policy=policy):
            return Protection(True, f"name {name}, made by {stamped_user or 'root'}")
        return Protection(
            False, f"name {name} is protected only for admins' containers (made by {stamped_user})"
        )
    return Protection(False, "not protected")
