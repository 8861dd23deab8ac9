"""Events of resource groups, nodes and workloads (owner: scheduler service).

Subjects: ``capstan.evt.rsg.<id>``, ``capstan.evt.node.<id>``, ``capstan.evt.workload.<id>``
(a workload's id is the id of the task or service instance set it schedules).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from ..events import Event, event
from .common import ResourceSpec

RSG = "rsg"
NODE = "node"
WORKLOAD = "workload"

# A group's policy may allow its tasks the host's network (off unless the operator turns it on):
# {"SandboxRule": {"HostNetwork": 1}}. Validated by the scheduler's policy; read by task owners.
SANDBOX_RULE = "SandboxRule"
HOST_NETWORK = "HostNetwork"


def allows_host_network(policy: dict[str, Any]) -> bool:
    rule = policy.get(SANDBOX_RULE)
    return isinstance(rule, dict) and rule.get(HOST_NETWORK) == 1


@event("ResourceGroupCreated", version=1)
class ResourceGroupCreated(Event):
    rg_id: str
    name: str
    description: str = ""
    tags: dict[str, str]
    policy: dict[str, Any]
    creator: str
    at_ms: int
    tenant: str = ""  # the main account that owns it (#8); "" before accounts existed


@event("ResourceGroupShared", version=1)
class ResourceGroupShared(Event):
    """The operator shares a group with other tenants (its whole list after the change, #8)."""

    rg_id: str
    tenants: list[str]
    at_ms: int


@event("ResourceGroupUpdated", version=1)
class ResourceGroupUpdated(Event):
    """The group's editable fields after the edit (all of them, so a fold needs no merge)."""

    rg_id: str
    name: str
    description: str
    tags: dict[str, str]
    policy: dict[str, Any]
    at_ms: int


@event("ResourceGroupDeleted", version=1)
class ResourceGroupDeleted(Event):
    rg_id: str
    at_ms: int


@event("NodeJoined", version=1)
class NodeJoined(Event):
    node_id: str
    resource_group_id: str
    name: str
    agent_kind: str
    cpu: float
    memory_gib: float
    gpus: dict[str, int]
    at_ms: int
    # Card types this node may split into tenths, fixed when it joins (SPEC §7.3: nodes added before
    # their card type was supported don't share). None in older events: the scheduler's current setting.
    shareable: list[str] | None = None
    # What the node's agent can run (CAPABILITIES). None in older events: from agent_kind
    # ("trainer" -> training, "inference" -> serving).
    capabilities: list[str] | None = None


@event("NodeStateChanged", version=1)
class NodeStateChanged(Event):
    node_id: str
    state: str
    reason: str = ""
    at_ms: int


class HealthCheckResult(BaseModel):
    """One check an agent ran on its node (sandbox, disk, memory, GPUs, ...)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    ok: bool
    detail: str = ""


@event("NodeHealthChecked", version=1)
class NodeHealthChecked(Event):
    """A health-check record. ``trigger``: "deploy" (the checks an agent runs before it joins) or
    "periodic". Periodic results are recorded when the outcome changes and at least hourly otherwise."""

    node_id: str
    ok: bool
    checks: list[HealthCheckResult]
    trigger: str = "periodic"
    at_ms: int


# -- the workload contract: how any owner asks the scheduler to place work (issue #9) ---------------
# What a node's agent can run, declared when it joins (NodeJoined.capabilities); a workload names the
# one it needs, and the scheduler places it only on nodes that declare it.
CAPABILITY_TRAINING = "training"
CAPABILITY_SERVING = "serving"
CAPABILITIES = (CAPABILITY_TRAINING, CAPABILITY_SERVING)
_BY_AGENT_KIND = {"trainer": (CAPABILITY_TRAINING,), "inference": (CAPABILITY_SERVING,)}


def node_capabilities(agent_kind: str, capabilities: list[str] | None) -> list[str]:
    """What a node can run: what it declared, or (a node that joined before capabilities) its agent kind's."""
    if capabilities is not None:
        return sorted(set(capabilities))
    return list(_BY_AGENT_KIND.get(agent_kind, ()))


@event("WorkloadSubmitted", version=1)
class WorkloadSubmitted(Event):
    """The scheduler's own contract for "a workload to place". Its owner (the trainer for a task, the
    inference service for a service replica) appends it in the same commit as its own events, on its
    own subject; the scheduler consumes this one type whoever the producer is. ``kind`` says what it is
    for people ("training", "service"); ``capability`` what a node must be able to run; ``tenant`` the
    main account that owns it (#8: another tenant sees it in a shared group's queue only anonymously;
    "" in events written before it was recorded)."""

    workload_id: str
    kind: str
    capability: str
    resource_group_id: str
    resources: ResourceSpec
    instance_count: int = 1
    tags: dict[str, str] = {}
    at_ms: int
    tenant: str = ""


@event("WorkloadWithdrawn", version=1)
class WorkloadWithdrawn(Event):
    """The owner no longer wants this workload (it ended, was stopped, scaled in): its resources are
    freed. Appended by the owner like ``WorkloadSubmitted``."""

    workload_id: str
    reason: str = ""
    at_ms: int


@event("WorkloadQueued", version=1)
class WorkloadQueued(Event):
    workload_id: str
    kind: str
    resource_group_id: str
    at_ms: int


@event("WorkloadRejected", version=1)
class WorkloadRejected(Event):
    workload_id: str
    reason: str
    at_ms: int


class InstancePlacement(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    index: int
    node_id: str
    # (card index on the node, tenths of that card); empty for CPU-only work. Older events lack it.
    cards: tuple[tuple[int, int], ...] = ()


@event("WorkloadPlaced", version=1)
class WorkloadPlaced(Event):
    workload_id: str
    kind: str
    resources: ResourceSpec
    placements: list[InstancePlacement]
    at_ms: int


@event("WorkloadPreemptionRequested", version=1)
class WorkloadPreemptionRequested(Event):
    """A higher-priority item needs this workload's resources: its owner stops it gracefully."""

    workload_id: str
    preemptor_id: str
    at_ms: int


@event("WorkloadInstancesLost", version=1)
class WorkloadInstancesLost(Event):
    """A node running this workload is lost for good (silent past the threshold): its owner restarts it."""

    workload_id: str
    node_id: str
    at_ms: int


@event("WorkloadRequeued", version=1)
class WorkloadRequeued(Event):
    """Back in the queue with its original submit order and priority; its allocations are freed."""

    workload_id: str
    reason: str
    at_ms: int


@event("WorkloadReleased", version=1)
class WorkloadReleased(Event):
    workload_id: str
    at_ms: int


# -- join tokens: how a node agent gets its certificate (subject capstan.evt.jointoken.<id>) ----------
JOIN_TOKEN = "jointoken"  # noqa: S105 - an aggregate kind, not a secret


@event("JoinTokenCreated", version=1)
class JoinTokenCreated(Event):
    """The secret itself is shown once to its creator and never stored: only its SHA-256 is."""

    token_id: str
    resource_group_id: str
    secret_sha256: str
    description: str = ""
    expires_at_ms: int  # 0: never
    created_by: str
    at_ms: int


@event("JoinTokenUsed", version=1)
class JoinTokenUsed(Event):
    """A node traded the token for a certificate (the audit trail of who joined with what)."""

    token_id: str
    node_id: str
    node_name: str
    certificate_sha256: str
    at_ms: int


@event("JoinTokenRevoked", version=1)
class JoinTokenRevoked(Event):
    token_id: str
    by: str
    at_ms: int
