"""The explainable queue (issue #3 point 7): a dry run of the scheduling core on the current read
models, so what it says is what the next cycle will do, in words."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from .domain.core import FreeState
from .domain.core.model import TENTHS_PER_CARD
from .isolation import schedule_isolating
from .snapshot import GroupPlan


@dataclass(frozen=True)
class QueueEntry:
    workload_id: str
    kind: str
    priority: int
    position: int
    card_type: str
    reason: str


@dataclass(frozen=True)
class NodeEntry:
    node_id: str
    state: str
    cpu: float
    cpu_free: float
    memory_gib: float
    memory_gib_free: float
    gpus: dict[str, int]
    gpus_free: dict[str, float]
    workloads: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class QueueReport:
    mode: int
    items: list[QueueEntry]
    lanes: list[Any]
    nodes: list[NodeEntry]


def explain(plan: GroupPlan, now_ms: int) -> QueueReport:
    decisions, set_aside = schedule_isolating(plan, now_ms)
    items: list[QueueEntry] = []
    for item_id in sorted(plan.items, key=lambda i: plan.items[i].order_key):
        item = plan.items[item_id]
        if item_id in set_aside:
            items.append(QueueEntry(item_id, item.kind, item.priority, 0, item.request.lane_type,
                                    f"the scheduler cannot handle it ({set_aside[item_id]}): the next cycle rejects it"))
        elif item_id in decisions.placements:
            items.append(QueueEntry(item_id, item.kind, item.priority, 0, item.request.lane_type,
                                    "fits now: starts in the next scheduling cycle"))
        elif item_id in decisions.queued:
            q = decisions.queued[item_id]
            items.append(QueueEntry(item_id, item.kind, item.priority, q.position, item.request.lane_type, q.reason))
    free = FreeState.build(plan.snapshot.nodes, plan.snapshot.running)
    on_node: dict[str, list[str]] = defaultdict(list)
    for r in plan.snapshot.running:
        for a in r.assignment:
            if r.item.id not in on_node[a.node_id]:
                on_node[a.node_id].append(r.item.id)
    nodes = []
    for n in plan.snapshot.nodes:
        f = free.nodes[n.id]
        totals: dict[str, int] = defaultdict(int)
        for c in n.cards:
            totals[c.type] += 1
        nodes.append(NodeEntry(
            node_id=n.id, state=n.state, cpu=n.cpu, cpu_free=f.cpu / 1000, memory_gib=n.memory_gib,
            memory_gib_free=round(f.mem / 1024, 3), gpus=dict(totals),
            gpus_free={t: sum(v) / TENTHS_PER_CARD for t, v in f.free.items()}, workloads=sorted(on_node[n.id]),
        ))
    return QueueReport(mode=plan.mode, items=items, lanes=list(decisions.lanes), nodes=nodes)
