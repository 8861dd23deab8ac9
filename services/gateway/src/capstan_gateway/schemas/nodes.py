"""Nodes of resource groups (SPEC §7.1): API models and their protobuf conversions."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from capstan_proto import scheduler_pb2

from .common import Page, from_ms, from_ms_required


class Allocated(BaseModel):
    cpu: float
    memory_gib: float
    gpus: dict[str, float]


class Node(BaseModel):
    id: str
    resource_group_id: str
    name: str
    state: str
    agent_kind: str
    cpu: float
    memory_gib: float
    gpus: dict[str, int]
    allocated: Allocated
    last_heartbeat_at: datetime | None
    joined_at: datetime
    state_reason: str
    state_changed_at: datetime | None

    @classmethod
    def from_proto(cls, n: scheduler_pb2.Node) -> Node:
        return cls(
            id=n.id,
            resource_group_id=n.resource_group_id,
            name=n.name,
            state=n.state,
            agent_kind=n.agent_kind,
            cpu=n.cpu,
            memory_gib=n.memory_gib,
            gpus=dict(n.gpus),
            allocated=Allocated(cpu=n.cpu_allocated, memory_gib=n.memory_gib_allocated, gpus=dict(n.gpus_allocated)),
            last_heartbeat_at=from_ms(n.last_heartbeat_ms),
            joined_at=from_ms_required(n.joined_at_ms),
            state_reason=n.state_reason,
            state_changed_at=from_ms(n.state_changed_at_ms),
        )


class NodeList(Page[Node]):
    @classmethod
    def from_proto(cls, resp: scheduler_pb2.ListNodesResponse) -> NodeList:
        return cls(
            items=[Node.from_proto(n) for n in resp.items],
            next_page_token=resp.next_page_token,
            total=resp.total,
        )


class HealthCheck(BaseModel):
    name: str
    ok: bool
    detail: str


class HealthCheckRecord(BaseModel):
    node_id: str
    resource_group_id: str
    ok: bool
    trigger: str
    checks: list[HealthCheck]
    at: datetime

    @classmethod
    def from_proto(cls, r: scheduler_pb2.HealthCheckRecord) -> HealthCheckRecord:
        return cls(
            node_id=r.node_id, resource_group_id=r.resource_group_id, ok=r.ok, trigger=r.trigger,
            checks=[HealthCheck(name=c.name, ok=c.ok, detail=c.detail) for c in r.checks], at=from_ms_required(r.at_ms),
        )


class HealthCheckList(Page[HealthCheckRecord]):
    @classmethod
    def from_proto(cls, resp: scheduler_pb2.ListHealthChecksResponse) -> HealthCheckList:
        return cls(
            items=[HealthCheckRecord.from_proto(r) for r in resp.items],
            next_page_token=resp.next_page_token,
            total=resp.total,
        )
