"""Which alerts belong to this enforcer's node: each node acts only on its own (issue 18).

One Alertmanager serves every node and routes by the alert's `node` label; an alert that still
reaches the wrong enforcer (a hand-made post, a stale route) is answered but never acted on,
so no enforcer ever touches another node's containers.
"""

from __future__ import annotations

from dataclasses import dataclass

from ds01.cluster_policy import effective_node
from ds01.policy import Policy

NODE_LABEL = "node"


@dataclass(frozen=True)
class NodeScope:
    """This enforcer's node and the cluster's node list (empty: one host, no list)."""

    own: str
    cluster: tuple[str, ...] = ()

    @classmethod
    def from_policy(cls, policy: Policy, *, node: str = "") -> NodeScope:
        """`node` (a flag) wins over `services.node`; the default is the short host name."""
        return cls(
            own=effective_node(node or policy.services.node), cluster=policy.cluster.node_names
        )


@dataclass(frozen=True)
class NodeVerdict:
    """Whether to act, and why (the `why` goes into the audit line of a refusal)."""

    mine: bool
    alert_node: str  # "" when the alert has no node label
    own_node: str
    why: str


def judge_node(*, alert_node: str, scope: NodeScope) -> NodeVerdict:
    """Mine when the alert names this node; without a node label only on a single host, where
    every alert is ours (the backward-compatible case): in a cluster it cannot be placed."""
    own = scope.own
    if alert_node:
        if alert_node == own:
            return NodeVerdict(True, alert_node, own, f"node {alert_node} is this node")
        why = f"not mine: alert is for node {alert_node}, this is node {own}"
        return NodeVerdict(False, alert_node, own, why)
    if not scope.cluster:
        return NodeVerdict(True, "", own, "no node label and no cluster node list: single host")
    why = f"not mine: alert has no node label and the cluster lists nodes; this is node {own}"
    return NodeVerdict(False, "", own, why)
