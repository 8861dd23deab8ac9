"""Resource group, node and workload aggregates: fold (events -> state) and decide (state -> events)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from capstan_core.contracts.common import ResourceSpec
from capstan_core.contracts.scheduling import (
    InstancePlacement,
    NodeJoined,
    NodeStateChanged,
    ResourceGroupCreated,
    WorkloadPlaced,
)
from capstan_core.errors import AlreadyExists, InvalidArgument
from capstan_core.events import Event

from .names import check_name, check_tags
from .policy import validate_policy

RG_NAME_MAX = 60
NODE_STATES = ("Deploying", "DeployFailed", "Running", "Releasing", "Released", "Abnormal", "Unused", "Mounting", "Repairing")


# -- resource group ---------------------------------------------------------------
@dataclass
class ResourceGroup:
    created: ResourceGroupCreated | None = None


def fold_rg(events: Sequence[Event]) -> ResourceGroup:
    rg = ResourceGroup()
    for e in events:
        if isinstance(e, ResourceGroupCreated):
            rg.created = e
    return rg


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
    if prev is None or (prev.cpu, prev.memory_gib, prev.gpus, prev.agent_kind) != (cpu, memory_gib, gpus, agent_kind):
        out.append(joined)
    if node.state != "Running" or out:
        out.append(NodeStateChanged(node_id=node_id, state="Running", reason="agent joined", at_ms=now_ms))
    return out


def decide_node_state(node: Node, *, node_id: str, state: str, reason: str, now_ms: int) -> list[Event]:
    if node.joined is None or node.state == state:
        return []
    return [NodeStateChanged(node_id=node_id, state=state, reason=reason, at_ms=now_ms)]


# -- workload ---------------------------------------------------------------------
def placement_event(
    *, workload_id: str, kind: str, resources: ResourceSpec, node_ids: Sequence[str], now_ms: int
) -> WorkloadPlaced:
    """The fact that a queued workload's instances go to ``node_ids`` (index i -> node_ids[i])."""
    return WorkloadPlaced(
        workload_id=workload_id,
        kind=kind,
        resources=resources,
        placements=[InstancePlacement(index=i, node_id=n) for i, n in enumerate(node_ids)],
        at_ms=now_ms,
    )
