"""Resource group, node and workload aggregates: fold (events -> state) and decide (state -> events)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from capstan_core.contracts.capacity import check_node_capacity
from capstan_core.contracts.scheduling import (
    CAPABILITIES,
    HealthCheckResult,
    NodeHealthChecked,
    NodeJoined,
    NodeStateChanged,
    ResourceGroupCreated,
    ResourceGroupDeleted,
    ResourceGroupShared,
    ResourceGroupUpdated,
    node_capabilities,
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
# SPEC §7.1: the node history lists these; the node list shows the others.
HISTORY_STATES = ("DeployFailed", "Unused")
HEALTH_ABNORMAL_PREFIX = "health check failed: "


# -- resource group ---------------------------------------------------------------
@dataclass
class ResourceGroup:
    created: ResourceGroupCreated | None = None
    name: str = ""
    description: str = ""
    tags: dict[str, str] | None = None
    policy: dict[str, Any] | None = None
    deleted: bool = False
    shared_with: tuple[str, ...] = ()


def fold_rg(events: Sequence[Event]) -> ResourceGroup:
    rg = ResourceGroup()
    for e in events:
        if isinstance(e, ResourceGroupCreated):
            rg.created = e
            rg.name, rg.description, rg.tags, rg.policy = e.name, e.description, e.tags, e.policy
        elif isinstance(e, ResourceGroupUpdated):
            rg.name, rg.description, rg.tags, rg.policy = e.name, e.description, e.tags, e.policy
        elif isinstance(e, ResourceGroupShared):
            rg.shared_with = tuple(e.tenants)
        elif isinstance(e, ResourceGroupDeleted):
            rg.deleted = True
    return rg


MAX_SHARES = 100


def decide_share_rg(rg: ResourceGroup, *, rg_id: str, tenants: Sequence[str], now_ms: int) -> list[Event]:
    """Share a group with the named tenants (the whole list; empty: the owner's only)."""
    _live(rg, rg_id)
    wanted = sorted(set(tenants))
    if len(wanted) > MAX_SHARES or any(not t or len(t) > 40 for t in wanted):
        raise InvalidArgument(f"tenants: up to {MAX_SHARES} main account ids", field="tenants")
    if tuple(wanted) == rg.shared_with:
        return []
    return [ResourceGroupShared(rg_id=rg_id, tenants=wanted, at_ms=now_ms)]


def _check_name_free(name: str, taken_by: str | None) -> None:
    """Group names are unique among a tenant's live groups; ``taken_by``: the id of another group of the same
    tenant that holds ``name``."""
    if taken_by is not None:
        raise AlreadyExists(
            f"a resource group named {name!r} already exists ({taken_by}); choose another name", field="name"
        )


def _live(rg: ResourceGroup, rg_id: str) -> ResourceGroup:
    if rg.created is None or rg.deleted:
        raise NotFound(f"resource group {rg_id} does not exist")
    return rg


def decide_update_rg(
    rg: ResourceGroup, *, rg_id: str, name: str | None, description: str | None, tags: dict[str, str] | None,
    policy: dict[str, Any] | None, now_ms: int, name_taken_by: str | None = None,
) -> list[Event]:
    """Edit any of name, description, tags (replaced whole) and policy; unchanged fields stay.
    ``name_taken_by``: another live group already named ``name``, if any (a rename onto it is refused)."""
    _live(rg, rg_id)
    new_name = rg.name if name is None else name
    new_desc = rg.description if description is None else description
    new_tags = dict(rg.tags or {}) if tags is None else tags
    check_name(new_name, field="name", max_len=RG_NAME_MAX)
    check_tags(new_tags)
    if len(new_desc) > 500:
        raise InvalidArgument("description must be at most 500 characters", field="description")
    new_policy = dict(rg.policy or {}) if policy is None else validate_policy(policy)
    if new_name != rg.name:
        _check_name_free(new_name, name_taken_by)
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
    creator: str, now_ms: int, name_taken_by: str | None = None, tenant: str = "",
) -> list[Event]:
    """``name_taken_by``: another live group already named ``name``, if any (the create is refused)."""
    check_name(name, field="name", max_len=RG_NAME_MAX)
    check_tags(tags)
    if len(description) > 500:
        raise InvalidArgument("description must be at most 500 characters", field="description")
    normalised = validate_policy(policy)
    if rg.created is not None:
        if rg.created.name == name:
            return []  # the same create, retried: nothing more to append
        raise AlreadyExists(f"resource group {rg_id} already exists")
    _check_name_free(name, name_taken_by)
    return [
        ResourceGroupCreated(
            rg_id=rg_id, name=name, description=description, tags=tags, policy=normalised, creator=creator, at_ms=now_ms,
            tenant=tenant,
        )
    ]


# -- node -------------------------------------------------------------------------
@dataclass
class Node:
    joined: NodeJoined | None = None
    state: str = ""
    reason: str = ""
    health: NodeHealthChecked | None = None  # the last health-check record


def fold_node(events: Sequence[Event]) -> Node:
    n = Node()
    for e in events:
        if isinstance(e, NodeJoined):
            n.joined = e
            n.state, n.reason = "Deploying", ""
        elif isinstance(e, NodeStateChanged):
            n.state, n.reason = e.state, e.reason
        elif isinstance(e, NodeHealthChecked):
            n.health = e
    return n


def _failed(checks: Sequence[HealthCheckResult]) -> str:
    return "; ".join(f"{c.name}: {c.detail}" if c.detail else c.name for c in checks if not c.ok)


def _check_results(checks: Sequence[HealthCheckResult]) -> None:
    names = [c.name for c in checks]
    if any(not n or len(n) > 40 for n in names) or len(set(names)) != len(names):
        raise InvalidArgument("health checks need distinct names of 1..40 characters", field="checks")
    if len(checks) > 50 or any(len(c.detail) > 1000 for c in checks):
        raise InvalidArgument("at most 50 health checks, each detail at most 1000 characters", field="checks")


def decide_join(
    node: Node, *, node_id: str, rg_id: str, name: str, agent_kind: str, cpu: float, memory_gib: float,
    gpus: dict[str, int], now_ms: int, checks: Sequence[HealthCheckResult] = (), shareable: frozenset[str] = frozenset(),
    capabilities: Sequence[str] = (),
) -> list[Event]:
    """Join (Deploying) and deploy: the agent ran its deploy checks first; all passing -> Running,
    any failing -> DeployFailed (kept in the group's node history). Re-joining is the same node."""
    check_name(name, field="name", max_len=RG_NAME_MAX)
    check_node_capacity(cpu, memory_gib, gpus)  # the node limits task submission checks too
    if agent_kind not in ("trainer", "inference"):
        raise InvalidArgument("agent_kind must be trainer or inference", field="agent_kind")
    if unknown := sorted(set(capabilities) - set(CAPABILITIES)):
        raise InvalidArgument(f"unknown capabilities {unknown}: a node can declare {', '.join(CAPABILITIES)}",
                              field="capabilities")
    # Declared, else (an agent from before capabilities) what its kind runs.
    caps = node_capabilities(agent_kind, list(capabilities) or None)
    _check_results(checks)
    prev = node.joined
    joined = NodeJoined(
        node_id=node_id, resource_group_id=rg_id, name=name, agent_kind=agent_kind, cpu=cpu, memory_gib=memory_gib,
        gpus=gpus, at_ms=now_ms, shareable=_shares_at_join(prev, gpus, shareable), capabilities=caps,
    )
    out: list[Event] = []
    if node.state == "Releasing" and prev is not None:
        return []  # an agent restarting while its node drains does not cancel the release
    if prev is None or (prev.cpu, prev.memory_gib, prev.gpus, prev.agent_kind) != (cpu, memory_gib, gpus, agent_kind) \
            or node_capabilities(prev.agent_kind, prev.capabilities) != caps:
        out.append(joined)
    failed = _failed(checks)
    if checks:
        out.append(NodeHealthChecked(node_id=node_id, ok=not failed, checks=list(checks), trigger="deploy", at_ms=now_ms))
    if failed:
        if node.state != "DeployFailed" or out:
            out.append(NodeStateChanged(node_id=node_id, state="DeployFailed", reason=f"deploy checks failed: {failed}",
                                        at_ms=now_ms))
    elif node.state != "Running" or out:
        out.append(NodeStateChanged(node_id=node_id, state="Running", reason="agent joined", at_ms=now_ms))
    return out


def _shares_at_join(prev: NodeJoined | None, gpus: dict[str, int], shareable: frozenset[str]) -> list[str]:
    """SPEC §7.3: a card type a node already had keeps the sharing it joined with (nodes added before
    their card type was supported don't share); a type new to the node takes the current setting."""
    earlier = set(prev.gpus) if prev is not None and prev.shareable is not None else set()
    kept = set(prev.shareable or ()) if prev is not None else set()
    return sorted(t for t in gpus if (t in kept if t in earlier else t in shareable))


def decide_health(
    node: Node, *, node_id: str, checks: Sequence[HealthCheckResult], now_ms: int, record_every_ms: int
) -> list[Event]:
    """A periodic health check. Recorded when its outcome (which checks fail) changes, or when the last
    record is older than ``record_every_ms``. Failing checks make a Running node Abnormal; passing ones
    bring a node that was Abnormal for failing checks back to Running."""
    if node.joined is None:
        raise NotFound(f"node {node_id} does not exist; the agent must join again")
    if not checks:
        raise InvalidArgument("a health check report needs at least one check", field="checks")
    _check_results(checks)
    if node.state in ("Released", "Unused", "DeployFailed"):
        return []  # not in service: nothing to record
    failed = _failed(checks)
    out: list[Event] = []
    last = node.health
    changed = last is None or _failed(last.checks) != failed
    if changed or now_ms - last.at_ms >= record_every_ms:  # type: ignore[union-attr]
        out.append(NodeHealthChecked(node_id=node_id, ok=not failed, checks=list(checks), trigger="periodic", at_ms=now_ms))
    if failed and node.state == "Running":
        out.append(NodeStateChanged(node_id=node_id, state="Abnormal", reason=HEALTH_ABNORMAL_PREFIX + failed, at_ms=now_ms))
    elif failed and node.state == "Abnormal" and node.reason.startswith(HEALTH_ABNORMAL_PREFIX) and changed:
        out.append(NodeStateChanged(node_id=node_id, state="Abnormal", reason=HEALTH_ABNORMAL_PREFIX + failed, at_ms=now_ms))
    elif not failed and node.state == "Abnormal" and node.reason.startswith(HEALTH_ABNORMAL_PREFIX):
        out.append(NodeStateChanged(node_id=node_id, state="Running", reason="health checks pass again", at_ms=now_ms))
    return out


def decide_remove_record(node: Node, *, node_id: str, now_ms: int) -> list[Event]:
    """A Released node leaves the node list for the group's history, as Unused."""
    if node.joined is None:
        raise NotFound(f"node {node_id} does not exist")
    if node.state == "Unused":
        return []
    if node.state != "Released":
        raise FailedPrecondition(
            f"node {node_id} is {node.state}; only a Released node can be moved to the history (release it first)"
        )
    return [NodeStateChanged(node_id=node_id, state="Unused", reason="record removed by the operator", at_ms=now_ms)]


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
