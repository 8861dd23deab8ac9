"""Events of online-service replicas as the scheduler sees them (owner: the inference service).

Subject ``capstan.evt.service.<service-id>``. Each replica of a service version is its own workload
(kind ``service``, workload id = ``replica_id``): replicas are independent, never a gang, so one lost
replica is replaced without touching the others. The service runtime that starts replicas comes with
online services; the scheduler already queues, prioritises and places them (SPEC §7.2: services come first).
"""

from __future__ import annotations

from ..events import Event, event
from .common import ResourceSpec

AGGREGATE = "service"


@event("ServiceReplicaRequested", version=1)
class ServiceReplicaRequested(Event):
    """The owner wants one more replica: the scheduler queues and places it (it may preempt training)."""

    replica_id: str
    service_id: str
    resource_group_id: str
    resources: ResourceSpec
    tags: dict[str, str]
    at_ms: int


@event("ServiceReplicaRetired", version=1)
class ServiceReplicaRetired(Event):
    """The owner no longer wants this replica (scaled in, service stopped): its resources are freed."""

    replica_id: str
    service_id: str
    reason: str = ""
    at_ms: int
