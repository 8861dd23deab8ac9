"""Placement of a workload's instances onto nodes (pure; all-or-nothing).

GPU items are packed (best fit: the node with the least free cards of the type
that still fits goes first), CPU-only items are spread (most free CPU first).
Issue #3 extends this with queues, priorities, preemption and fragmentation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from capstan_core.contracts.common import ResourceSpec

EPS = 1e-9


@dataclass
class NodeFree:
    node_id: str
    cpu: float
    memory_gib: float
    gpus: dict[str, float] = field(default_factory=dict)

    def fits(self, r: ResourceSpec) -> bool:
        if self.cpu + EPS < r.cpu or self.memory_gib + EPS < r.memory_gib:
            return False
        if r.gpu > 0 and self.gpus.get(r.gpu_type, 0.0) + EPS < r.gpu:
            return False
        return True

    def take(self, r: ResourceSpec) -> None:
        self.cpu -= r.cpu
        self.memory_gib -= r.memory_gib
        if r.gpu > 0:
            self.gpus[r.gpu_type] = self.gpus.get(r.gpu_type, 0.0) - r.gpu


def place(nodes: Sequence[NodeFree], r: ResourceSpec, count: int) -> list[str] | None:
    """Node ids for ``count`` instances of ``r``, or None when they don't all fit (gang)."""
    free = {n.node_id: NodeFree(n.node_id, n.cpu, n.memory_gib, dict(n.gpus)) for n in nodes}
    chosen: list[str] = []
    for _ in range(count):
        candidates = [n for n in free.values() if n.fits(r)]
        if not candidates:
            return None
        if r.gpu > 0:
            best = min(candidates, key=lambda n: (n.gpus.get(r.gpu_type, 0.0), n.node_id))
        else:
            best = max(candidates, key=lambda n: (n.cpu, n.memory_gib, n.node_id))
        best.take(r)
        chosen.append(best.node_id)
    return chosen


def fits_anywhere_empty(capacities: Sequence[NodeFree], r: ResourceSpec) -> bool:
    """Whether one instance could ever fit on some node of the group (at full capacity)."""
    return any(n.fits(r) for n in capacities)
