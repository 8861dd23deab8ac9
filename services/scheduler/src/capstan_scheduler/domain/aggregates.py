"""Resource group, node and workload aggregates: fold (events -> state) and decide (state -> events)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from capstan_core.contracts.scheduling import (
    NodeJoined,
    NodeStateChanged,
    ResourceGroupCreated,
    ResourceGroupDeleted,
    ResourceGroupUpdated,
)
from capstan_core.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from capstan_core.events import Event

from .names import check_name, check_tags
from .policy import validate_policy

RG_NAME_MAX = 60
NODE_STATES = ("Deploying", "DeployFailed", "Running", "Releasing", "Released", "Abnormal", "Unused", "Mounting", "Repairing")
# SPEC §7.1: a group can be deleted only when none of its nodes is in one of these states.
NODE_STATES_IN_USE = ("Running", "Deploying", "Abnormal", "Releasing", "Repairing", "Mounting")
RELEASABLE = ("Running", "Abnormal")


# -- resource group ---------------------------------------------------------------
@dataclass
class ResourceGroup:
    created: ResourceGroupCreated | None = None
    name: str = ""
    description: str = ""
    tags: dict[str, str] | None = None
    policy: dict[str, Any] | None = None
    deleted: bool = False


def fold_rg(events: Sequence[Event]) -> ResourceGroup:
    rg = ResourceGroup()
    for e in events:
        if isinstance(e, ResourceGroupCreated):
            rg.created = e
            rg.name, rg.description, rg.tags, rg.policy = e.name, e.description, e.tags, e.policy
        elif isinstance(e, ResourceGroupUpdated):
            rg.name, rg.description, rg.tags, rg.policy = e.name, e.description, e.tags, e.policy
        elif isinstance(e, ResourceGroupDeleted):
            rg.deleted = True
    return rg


def _live(rg: ResourceGroup, rg_id: str) -> ResourceGroup:
    if rg.created is None or rg.deleted:
        raise NotFound(f"resource group {rg_id} does not exist")
    return rg


def decide_update_rg(
    rg: ResourceGroup, *, rg_id: str, name: str | None, description: str | None, tags: dict[str, str] | None,
    policy: dict[str, Any] | None, now_ms: int,
) -> list[Event]:
    """Edit any of name, description, tags (replaced whole) and policy; unchanged fields stay."""
    _live(rg, rg_id)
    new_name = rg.name if name is None else name
    new_desc = rg.description if description is None else description
    new_tags = dict(rg.tags or {}) if tags is None else tags
    check_name(new_name, field="name", max_len=RG_NAME_MAX)
    check_tags(new_tags)
    if len(new_desc) > 500:
        raise InvalidArgument("description must be at most 500 characters", field="description")
    new_policy = dict(rg.policy or {}) if policy is None else validate_policy(policy)
    if (new_name, new_desc, new_tags, new_policy) == (rg.name, rg.description, rg.tags, rg.policy):
        return []
    return [
        ResourceGroupUpdated(
            rg_id=rg_id, name=new_name, description=new_desc, tags=new_tags, policy=new_policy, at_ms=now_ms
        )
    ]


def decide_delete_rg(rg: ResourceGroup, *, rg_id: str, nodes_in_use: Sequence[tuple[str, str]], now_ms: int) -> list[Event]:
    """``nodes_in_use``: (node id, state) of the group's nodes in a state that blocks deletion."""
    if rg.created is not None and rg.deleted:
        return []  # a retried delete
    _live(rg, rg_id)
    if nodes_in_use:
        listed = ", ".join(f"{nid} ({state})" for nid, state in nodes_in_use)
        raise FailedPrecondition(f"resource group {rg_id} still has nodes in use: {listed}; release them first")
    return [ResourceGroupDeleted(rg_id=rg_id, at_ms=now_ms)]


def decide_create_rg(
    rg: ResourceGroup, *, rg_id: str, name: str, description: str, tags: dict[str, str], policy: dict[str, Any] | None,
    creator: str, now_ms: int,
) -> list[Event]:
    check_name(name, field="name", max_len=RG_NAME_MAX)
    check_tags(tags)
    if len(description) > 500:
        raise InvalidArgument("description must be at most 500 characters", field="description")
    normalised = validate_policy(policy)
    if rg.created is not None:
        if rg.created.name == name:
            return []  # the same create, retried: nothing more to append
        raise AlreadyExists(f"resource group {rg_id} already exists")
    return [
        ResourceGroupCreated(
            rg_id=rg_id, name=name, description=description, tags=tags, policy=normalised, creator=creator, at_ms=now_ms
        )
    ]


# -- node -------------------------------------------------------------------------
@dataclass
class Node:
    joined: NodeJoined | None = None
    state: str = ""


def fold_node(events: Sequence[Event]) -> Node:
    n = Node()
    for e in events:
        if isinstance(e, NodeJoined):
            n.joined = e
            n.state = "Deploying"
        elif isinstance(e, NodeStateChanged):
            n.state = e.state
    return n


def decide_join(
    node: Node, *, node_id: str, rg_id: str, name: str, agent_kind: str, cpu: float, memory_gib: float,
    gpus: dict[str, int], now_ms: int,
) -> list[Event]:
    check_name(name, field="name", max_len=RG_NAME_MAX)
    if cpu <= 0 or memory_gib <= 0:
        raise InvalidArgument("a node must offer cpu > 0 and memory_gib > 0", field="cpu")
    if any(v < 0 for v in gpus.values()):
        raise InvalidArgument("GPU counts must be >= 0", field="gpus")
    if agent_kind not in ("trainer", "inference"):
        raise InvalidArgument("agent_kind must be trainer or inference", field="agent_kind")
    joined = NodeJoined(
        node_id=node_id, resource_group_id=rg_id, name=name, agent_kind=agent_kind, cpu=cpu, memory_gib=memory_gib,
        gpus=gpus, at_ms=now_ms,
    )
    out: list[Event] = []
    prev = node.joined
    if node.state == "Releasing" and prev is not None:
        return []  # an agent restarting while its node drains does not cancel the release
    if prev is None or (prev.cpu, prev.memory_gib, prev.gpus, prev.agent_kind) != (cpu, memory_gib, gpus, agent_kind):
        out.append(joined)
    if node.state != "Running" or out:
        out.append(NodeStateChanged(node_id=node_id, state="Running", reason="agent joined", at_ms=now_ms))
    return out


def decide_release(node: Node, *, node_id: str, now_ms: int) -> list[Event]:
    """Release a Running or Abnormal node: it takes no new work and becomes Released once drained."""
    if node.joined is None:
        raise NotFound(f"node {node_id} does not exist")
    if node.state in ("Releasing", "Released"):
        return []
    if node.state not in RELEASABLE:
        raise FailedPrecondition(f"node {node_id} is {node.state}; only Running or Abnormal nodes can be released")
    return [NodeStateChanged(node_id=node_id, state="Releasing", reason="released by the operator", at_ms=now_ms)]


def decide_node_state(node: Node, *, node_id: str, state: str, reason: str, now_ms: int) -> list[Event]:
    if node.joined is None or node.state == state:
        return []
    return [NodeStateChanged(node_id=node_id, state=state, reason=reason, at_ms=now_ms)]


# -- workload ---------------------------------------------------------------------
