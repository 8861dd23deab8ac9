"""The scheduling cycle, level-triggered from the read models (Kueue-style numbered phases).

1. admit: submitted workloads -> WorkloadQueued (or WorkloadRejected with a reason);
2. release: ended workloads -> WorkloadReleased (frees their allocations);
3. snapshot: free capacity of every Running node, per resource group;
4. place: queued workloads in FIFO order, all-or-nothing; strict FIFO per resource
   group and card type (a head that does not fit blocks later items of its type);
5. wait until the read models hold what was appended, so the next cycle's
   snapshot includes it (no double allocation).
Every append carries an expected sequence on the workload's subject, so a
restarted or duplicated scheduler cannot place a workload twice.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from typing import Any

from sqlalchemy import select

from capstan_core import tracing
from capstan_core.contracts.common import ResourceSpec
from capstan_core.contracts.scheduling import WORKLOAD, WorkloadQueued, WorkloadRejected, WorkloadReleased
from capstan_core.errors import Conflict, Unavailable
from capstan_core.events import Event
from capstan_core.eventstore import AppendResult
from capstan_core.service import ServiceContext
from capstan_core.streams import event_subject

from .app import SchedulerApp
from .domain.aggregates import placement_event
from .domain.placement import NodeFree, fits_anywhere_empty, place
from .tables import allocations, nodes, resource_groups, workloads

log = logging.getLogger(__name__)


class Scheduler:
    def __init__(self, app: SchedulerApp) -> None:
        self.app = app
        self.ctx: ServiceContext = app.ctx
        self._tracer = tracing.tracer("scheduler")

    async def _append(self, w: dict[str, Any], events: list[Event], msg_id: str) -> AppendResult | None:
        """Append on the workload's subject, continuing the trace of the submission."""
        ctx = tracing.extract({"traceparent": w["trace_parent"]} if w["trace_parent"] else {})
        with tracing.attached(ctx), self._tracer.start_as_current_span(f"schedule {events[0].TYPE}"):
            try:
                return await self.ctx.store.append(
                    event_subject(WORKLOAD, w["id"]), events, expected_seq=w["subject_seq"], msg_id=msg_id
                )
            except Conflict:
                return None  # the read model was stale; the next cycle sees the truth

    async def cycle(self) -> None:
        now = self.app.clock.now_ms()
        appended: list[int] = []
        with self.ctx.engine.connect() as conn:
            pending = conn.execute(
                select(workloads).where(workloads.c.status.in_(("submitted", "queued", "placed")))
                .order_by(workloads.c.submitted_seq)
            ).mappings().all()
            groups = {r["id"] for r in conn.execute(select(resource_groups.c.id)).mappings()}
            node_rows = conn.execute(select(nodes)).mappings().all()
            alloc_rows = conn.execute(select(allocations)).mappings().all()

        # 1-2. admit and release
        for w in pending:
            if w["ended"]:
                r = await self._append(dict(w), [WorkloadReleased(workload_id=w["id"], at_ms=now)], f"release:{w['id']}")
            elif w["status"] == "queued" and w["resource_group_id"] not in groups:
                gone = WorkloadRejected(workload_id=w["id"], reason=f"resource group {w['resource_group_id']} was deleted", at_ms=now)
                r = await self._append(dict(w), [gone], f"reject:{w['id']}")
            elif w["status"] == "submitted":
                capacity = [_free(n, []) for n in node_rows if n["resource_group_id"] == w["resource_group_id"]]
                reason = _reject_reason(w, groups, capacity)
                ev: Event = (
                    WorkloadRejected(workload_id=w["id"], reason=reason, at_ms=now) if reason
                    else WorkloadQueued(workload_id=w["id"], kind=w["kind"], resource_group_id=w["resource_group_id"], at_ms=now)
                )
                r = await self._append(dict(w), [ev], f"admit:{w['id']}")
            else:
                continue
            if r is not None:
                appended.append(r.seq)

        # 3. snapshot of free capacity on Running nodes of the right agent kind
        allocs_by_node: dict[str, list[Any]] = defaultdict(list)
        for a in alloc_rows:
            allocs_by_node[a["node_id"]].append(a)
        free_by_group: dict[str, list[NodeFree]] = defaultdict(list)
        for n in node_rows:
            if n["state"] == "Running" and n["agent_kind"] == "trainer":
                free_by_group[n["resource_group_id"]].append(_free(n, allocs_by_node[n["id"]]))

        # 4. place queued workloads, FIFO, strict per (group, card type)
        blocked: set[tuple[str, str]] = set()
        for w in pending:
            if w["status"] != "queued" or w["ended"]:
                continue
            lane = (w["resource_group_id"], w["gpu_type"] if w["gpu"] > 0 else "")
            if lane in blocked:
                continue
            spec = ResourceSpec(cpu=w["cpu"], memory_gib=w["memory_gib"], gpu_type=w["gpu_type"], gpu=w["gpu"])
            pool = free_by_group[w["resource_group_id"]]
            chosen = place(pool, spec, w["instance_count"])
            if chosen is None:
                blocked.add(lane)
                continue
            placed = placement_event(workload_id=w["id"], kind=w["kind"], resources=spec, node_ids=chosen, now_ms=now)
            r = await self._append(dict(w), [placed], f"place:{w['id']}")
            if r is None:
                blocked.add(lane)
                continue
            appended.append(r.seq)
            by_id = {n.node_id: n for n in pool}
            for node_id in chosen:
                by_id[node_id].take(spec)

        # 5. read-your-writes before the next cycle
        if appended:
            if not await self.ctx.runner.wait_for(max(appended), timeout=30):
                raise Unavailable("scheduler read models did not catch up with its own appends")

    async def step(self) -> None:
        await self.cycle()
        await self.app.mark_silent_nodes_abnormal()
        await self.app.finish_drained_releases()


def _free(n: Any, allocs: list[Any]) -> NodeFree:
    gpus = {k: float(v) for k, v in json.loads(n["gpus"]).items()}
    free = NodeFree(n["id"], float(n["cpu"]), float(n["memory_gib"]), gpus)
    for a in allocs:
        free.take(ResourceSpec(cpu=a["cpu"], memory_gib=a["memory_gib"], gpu_type=a["gpu_type"], gpu=a["gpu"]))
    return free


def _reject_reason(w: Any, groups: set[str], capacity: list[NodeFree]) -> str:
    if w["resource_group_id"] not in groups:
        return f"resource group {w['resource_group_id']} does not exist"
    spec = ResourceSpec(cpu=w["cpu"], memory_gib=w["memory_gib"], gpu_type=w["gpu_type"], gpu=w["gpu"])
    if capacity and not fits_anywhere_empty(capacity, spec):
        return (
            f"no node of {w['resource_group_id']} can ever hold one instance "
            f"(cpu {spec.cpu}, memory {spec.memory_gib} GiB, gpu {spec.gpu} {spec.gpu_type})"
        )
    return ""
