"""The explainable queue of a resource group (issue #3): API models and their protobuf conversion."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from capstan_proto import scheduler_pb2

from .common import from_ms
from .training_tasks import Resources


class QueuedItem(BaseModel):
    workload_id: str = Field(description="empty for another tenant's work")
    kind: str
    priority: str = Field(description="P0 (highest) .. P9")
    position: int = Field(description="1-based position in its lane; 0: starts in the next scheduling cycle")
    card_type: str = Field(description="the lane: card type, empty for CPU-only work")
    reason: str = Field(description="why it waits, in words")
    submitted_at: datetime | None
    resources: Resources
    instance_count: int
    other_tenant: bool = Field(
        False, description="another tenant's work in a shared group: shown only by position, priority, lane and size")


class Lane(BaseModel):
    card_type: str
    total_cards: int
    whole_machine_free_cards: int
    fragment_free_cards: float


class NodeBoardEntry(BaseModel):
    node_id: str
    name: str
    state: str
    cpu: float
    cpu_free: float
    memory_gib: float
    memory_gib_free: float
    gpus: dict[str, int]
    gpus_free: dict[str, float]
    workloads: list[str] = Field(description="what runs there (for a user: its own tenant's)")
    other_tenant_workloads: int = Field(0, description="how many of other tenants' workloads also run there")


class QueueView(BaseModel):
    resource_group_id: str
    queue_mode: int = Field(description="0 strict FIFO, 1 backfill within a priority, 2 backfill across the queue")
    items: list[QueuedItem]
    lanes: list[Lane]
    nodes: list[NodeBoardEntry]

    @classmethod
    def from_proto(cls, v: scheduler_pb2.QueueView) -> QueueView:
        return cls(
            resource_group_id=v.resource_group_id,
            queue_mode=v.queue_mode,
            items=[
                QueuedItem(
                    workload_id=i.workload_id, kind=i.kind, priority=f"P{i.priority}", position=i.position,
                    card_type=i.card_type, reason=i.reason, submitted_at=from_ms(i.submitted_at_ms),
                    resources=Resources.from_proto(i.resources), instance_count=i.instance_count,
                    other_tenant=i.other_tenant,
                )
                for i in v.items
            ],
            lanes=[
                Lane(card_type=lane.card_type, total_cards=lane.total_cards,
                     whole_machine_free_cards=lane.whole_machine_free_cards,
                     fragment_free_cards=lane.fragment_free_cards)
                for lane in v.lanes
            ],
            nodes=[
                NodeBoardEntry(
                    node_id=n.node_id, name=n.name, state=n.state, cpu=n.cpu, cpu_free=n.cpu_free,
                    memory_gib=n.memory_gib, memory_gib_free=n.memory_gib_free, gpus=dict(n.gpus),
                    gpus_free=dict(n.gpus_free), workloads=list(n.workloads),
                    other_tenant_workloads=n.other_tenant_workloads,
                )
                for n in v.nodes
            ],
        )
