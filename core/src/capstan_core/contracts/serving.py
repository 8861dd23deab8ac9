"""Events of online services (owner: the inference service; SPEC §6).

Subject ``capstan.evt.service.<ms-id>``: one aggregate per service group holds its versions, replicas,
keys and autoscaling. Each replica is its own workload for the scheduler (workload id = replica id,
kind ``service``, capability ``serving``): the commit that adds a replica also holds the scheduler's
``WorkloadSubmitted``, the one that removes it ``WorkloadWithdrawn`` (``contracts.scheduling``).

A version's ``spec`` is the validated §6.2 form as plain data (``capstan_inference.domain.spec``
reads and validates it); key secrets appear only as their SHA-256.
"""

from __future__ import annotations

from typing import Any

from ..events import Event, event
from .common import ResourceSpec

AGGREGATE = "service"


@event("ServiceCreated", version=1)
class ServiceCreated(Event):
    service_id: str
    name: str
    description: str = ""
    tags: dict[str, str] = {}
    deployment_mode: str  # "standard" | "multi-instance"
    auth_enabled: bool = False
    group_qps_limit: int = 500
    auto_stop_at_ms: int = 0
    creator: str
    at_ms: int
    tenant: str = ""  # the owning tenant (issue #8), from the creating principal; "" before tenants


@event("ServiceVersionCreated", version=1)
class ServiceVersionCreated(Event):
    """A new version (its number is the group's next); starts with ``spec['replicas']`` replicas."""

    service_id: str
    version_id: str
    number: int
    spec: dict[str, Any]
    weight: int
    by: str
    at_ms: int


@event("ServiceVersionUpdated", version=1)
class ServiceVersionUpdated(Event):
    """The version's spec changed (revision + 1): its replicas are rolled to it. ``what``: the changed fields."""

    service_id: str
    version_id: str
    revision: int
    spec: dict[str, Any]
    what: list[str]
    by: str
    at_ms: int


@event("ServiceVersionScaled", version=1)
class ServiceVersionScaled(Event):
    service_id: str
    version_id: str
    replicas: int
    by: str  # a user, or "autoscaler"
    reason: str = ""
    at_ms: int


@event("ServiceAutoscalingSet", version=1)
class ServiceAutoscalingSet(Event):
    """How a version's replica count is decided: ``{"mode": "manual"}``, ``{"mode": "time", ...}`` or
    ``{"mode": "hpa", ...}`` (``capstan_inference.domain.autoscale``)."""

    service_id: str
    version_id: str
    autoscaling: dict[str, Any]
    by: str
    at_ms: int


@event("ServiceVersionDeleted", version=1)
class ServiceVersionDeleted(Event):
    service_id: str
    version_id: str
    by: str
    at_ms: int


@event("ServiceVersionFailed", version=1)
class ServiceVersionFailed(Event):
    """A first deployment used up its retry policy: no more replicas are started until it is updated."""

    service_id: str
    version_id: str
    reason: str
    at_ms: int


@event("ServiceWeightsSet", version=1)
class ServiceWeightsSet(Event):
    service_id: str
    weights: dict[str, int]
    by: str
    at_ms: int


@event("ServiceStateChanged", version=1)
class ServiceStateChanged(Event):
    """The group was stopped, started or asked to be deleted (``state``: Running | Stopped | Deleting)."""

    service_id: str
    state: str
    by: str
    reason: str = ""
    at_ms: int


@event("ServiceUpdated", version=1)
class ServiceUpdated(Event):
    """Group fields: description, tags, auth, the group's QPS cap, auto-stop."""

    service_id: str
    description: str
    tags: dict[str, str]
    auth_enabled: bool
    group_qps_limit: int
    auto_stop_at_ms: int
    what: list[str]
    by: str
    at_ms: int


@event("ServiceDeleted", version=1)
class ServiceDeleted(Event):
    service_id: str
    at_ms: int


@event("ServiceReplicaAdded", version=1)
class ServiceReplicaAdded(Event):
    """Appended with the scheduler's ``WorkloadSubmitted`` for ``replica_id``."""

    service_id: str
    version_id: str
    replica_id: str
    revision: int  # the version's spec revision this replica runs
    resources: ResourceSpec
    at_ms: int


@event("ServiceReplicaReported", version=1)
class ServiceReplicaReported(Event):
    """What the replica's agent reported, only when it changed (Starting | Ready | NotReady | Exited | Stopped)."""

    service_id: str
    replica_id: str
    state: str
    address: str = ""
    exit_code: int = 0
    message: str = ""
    generation: int = 0
    at_ms: int


@event("ServiceReplicaRestarted", version=1)
class ServiceReplicaRestarted(Event):
    """An exited replica is started again: its generation grows (the agent starts the new one)."""

    service_id: str
    replica_id: str
    generation: int
    reason: str
    at_ms: int


@event("ServiceReplicaIsolated", version=1)
class ServiceReplicaIsolated(Event):
    service_id: str
    replica_id: str
    isolated: bool
    by: str
    at_ms: int


@event("ServiceReplicaRebuildRequested", version=1)
class ServiceReplicaRebuildRequested(Event):
    """Replace this replica (a fresh one is added first, then this one drains)."""

    service_id: str
    replica_id: str
    by: str
    at_ms: int


@event("ServiceReplicaDraining", version=1)
class ServiceReplicaDraining(Event):
    """Out of the routing table from now; stopped once the gateways have seen that (the drain delay)."""

    service_id: str
    replica_id: str
    reason: str
    at_ms: int


@event("ServiceReplicaStopping", version=1)
class ServiceReplicaStopping(Event):
    """The agent stops it: pre-stop, SIGTERM, the grace period, SIGKILL."""

    service_id: str
    replica_id: str
    at_ms: int


@event("ServiceReplicaRemoved", version=1)
class ServiceReplicaRemoved(Event):
    """Gone; appended with the scheduler's ``WorkloadWithdrawn``."""

    service_id: str
    replica_id: str
    reason: str
    at_ms: int


@event("ServiceKeyCreated", version=1)
class ServiceKeyCreated(Event):
    service_id: str
    key_id: str
    secret_sha256: str
    remark: str = ""
    tokens_per_minute: int = 0
    tokens_per_day: int = 0
    by: str
    at_ms: int


@event("ServiceKeyUpdated", version=1)
class ServiceKeyUpdated(Event):
    service_id: str
    key_id: str
    enabled: bool
    remark: str
    tokens_per_minute: int
    tokens_per_day: int
    by: str
    at_ms: int


@event("ServiceKeyDeleted", version=1)
class ServiceKeyDeleted(Event):
    service_id: str
    key_id: str
    by: str
    at_ms: int
